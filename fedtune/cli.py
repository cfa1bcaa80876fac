"""The ``fedtune`` command: simulate, generate, export, evaluate, certs, keys, signing-key, sign,
registry, algorithms, config, dp-plan."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path
from typing import Any

from fedtune.algorithms import resolve
from fedtune.cli_deploy import add_deploy_commands
from fedtune.cli_evaluate import add_evaluate_command
from fedtune.config import Config, parse_overrides
from fedtune.errors import ConfigError

DEFAULT_CLIENTS = 8
RECIPES = Path(__file__).resolve().parents[1] / "simulations" / "recipes"


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: a flat table of config keys (optionally under [config]).

    ``path`` is a file, or the name of a recipe shipped in ``simulations/recipes``.
    """
    p = Path(path)
    if not p.is_file() and (RECIPES / f"{path}.toml").is_file():
        p = RECIPES / f"{path}.toml"
    if not p.is_file():
        shipped = sorted(f.stem for f in RECIPES.glob("*.toml"))
        raise ConfigError(f"Recipe '{p}' does not exist; pass a .toml file or one of "
                          f"{', '.join(shipped) or 'the shipped recipes'}.")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"Recipe '{p}' is not valid TOML ({err}); fix the syntax.") from None
    return dict(data.get("config", data))


def resolve_config(args: argparse.Namespace) -> Config:
    """Defaults <- recipe <- --run-config <- explicit options (last wins).

    A recipe may also say ``num-clients`` (the simulation's size, not a run-config key); an
    explicit ``--num-clients`` wins.
    """
    flat: dict[str, Any] = {}
    if args.resume:
        saved = _resume_config(args)
        flat.update(saved)
    if args.recipe:
        flat.update(load_recipe(args.recipe))
        recipe_clients = flat.pop("num-clients", None)
        if args.num_clients is None and recipe_clients is not None:
            args.num_clients = int(recipe_clients)
    if args.run_config:
        flat.update(parse_overrides(args.run_config))
    for key, value in (("algorithm", args.algorithm), ("num-server-rounds", args.rounds),
                       ("model", args.model), ("data", args.data), ("run-name", args.name),
                       ("output-dir", args.output_dir), ("objective", args.objective),
                       ("init-adapter", args.init_adapter)):
        if value is not None:
            flat[key] = value
    if args.resume:
        from fedtune.checkpoint import config_changes

        changes = config_changes(saved, flat)
        if changes:
            raise ConfigError("a resumed run keeps its config, but these options change it: "
                              + "; ".join(changes) + ".")
    return Config.from_flat(flat)


def _resume_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config saved in the run's checkpoint, pointed back at that run folder."""
    from fedtune.checkpoint import CheckpointError, load_checkpoint

    if args.recipe:
        raise ConfigError("--resume takes the run's own config; drop --recipe.")
    try:
        saved = load_checkpoint(args.resume).config
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    run = str(Path(args.resume).resolve())
    if "min-available-nodes" not in saved:  # a damaged checkpoint's config
        raise ConfigError(f"cannot resume '{args.resume}': its checkpoint holds no run config; "
                          "resume from a copy or start the run again.")
    if args.num_clients is None:
        args.num_clients = int(saved["min-available-nodes"])
    return {**saved, "resume": run, "run-dir": run}


def _write_app_dir(cfg: Config, where: Path) -> Path:
    """A Flower app folder whose pyproject carries this run's resolved config.

    Flower's simulation engine gives each ClientApp the app's ``[tool.flwr.app.config]``; this
    lets the installed apps run from any folder with the user's overrides.
    """
    where.mkdir(parents=True, exist_ok=True)
    lines = [
        '[project]', 'name = "fedtune-run"', 'version = "0.0.0"', '',
        '[tool.flwr.app]', 'publisher = "fedtune"', '',
        '[tool.flwr.app.components]', 'serverapp = "server_app.app:app"',
        'clientapp = "client_app.app:app"', '', '[tool.flwr.app.config]',
    ] + [f'{key} = {_toml_value(value)}' for key, value in cfg.to_flat().items()]
    (where / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return where


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def simulate(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if cfg.privacy.enabled and not cfg.privacy.dp_population:  # N: the virtual clients
        clients = args.num_clients if args.num_clients is not None else DEFAULT_CLIENTS
        cfg.privacy.dp_population = max(1, clients)
    algorithm = resolve(cfg)
    num_clients = args.num_clients if args.num_clients is not None else DEFAULT_CLIENTS
    if num_clients < 1:
        raise ConfigError(f"--num-clients={num_clients} must be at least 1.")
    if cfg.server.min_train_nodes > num_clients:
        raise ConfigError(f"min-train-nodes={cfg.server.min_train_nodes} exceeds --num-clients="
                          f"{num_clients}; lower it or add clients.")
    from fedtune.data.split import EXAMPLES, PAIRS, check_split
    from fedtune.results import new_run_dir

    # the data, then the model, as the server and every client will open them: a user error is
    # one sentence now, before Ray starts, not a traceback from each client
    check_split(cfg.data, PAIRS if cfg.train.objective == "dpo" else EXAMPLES, cfg.server.seed,
                num_clients)
    from fedtune.models.loading import load_tokenizer, model_source

    if model_source(cfg.model.model) != "tiny":  # the built-in one is trained in code
        load_tokenizer(cfg.model.model)  # a folder without tokenizer files, an unreachable id
    from fedtune.tracking import check_trackers, parse_report_to

    check_trackers(parse_report_to(cfg.output.report_to))  # installed, and able to start
    if cfg.output.resume and not algorithm.federated:
        raise ConfigError(f"--resume applies to federated runs, not to '{algorithm.name}'.")
    if cfg.output.resume and num_clients != cfg.server.min_available_nodes:
        raise ConfigError(f"--num-clients={num_clients} differs from the run's "
                          f"{cfg.server.min_available_nodes}; resume with the same clients.")
    cfg.output.run_dir = str(new_run_dir(cfg).resolve())
    cfg.output.node_state_dir = str(Path(cfg.output.run_dir) / "node-state")
    if not cfg.output.cache_dir:  # the run's processes share replayed versions, DPO references
        cfg.output.cache_dir = str(Path(cfg.output.run_dir) / "cache")
    cfg.server.min_available_nodes = num_clients
    algorithm.simulation_setup(cfg)
    if not algorithm.federated:
        algorithm.run(cfg, num_clients)
        return 0
    return _run_flower_simulation(cfg, num_clients, args)


def _cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch (1.5 s before the engine starts)
    on a Linux machine with no NVIDIA driver (neither /proc/driver/nvidia nor WSL's /dev/dxg)."""
    if sys.platform == "linux" and not (Path("/proc/driver/nvidia").exists()
                                        or Path("/dev/dxg").exists()):
        return False
    import torch

    return torch.cuda.is_available()


def _run_flower_simulation(cfg: Config, num_clients: int, args: argparse.Namespace) -> int:
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import EventType, _run_simulation

    from fedtune.flower.ray_backend import installed

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    gpus = args.client_gpus
    if gpus is None:  # Ray hides GPUs from clients given none: share one by default
        gpus = 0.5 if _cuda_available() else 0.0
    backend = {
        "client_resources": {"num_cpus": args.client_cpus, "num_gpus": gpus},
        "init_args": {"logging_level": "INFO" if args.verbose else "ERROR",
                      "log_to_driver": bool(args.verbose)},
    }
    flat = cfg.to_flat()
    with tempfile.TemporaryDirectory(prefix="fedtune-app-") as tmp, installed():
        app_dir = _write_app_dir(cfg, Path(tmp))
        context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                          run_config=flat)
        _run_simulation(
            num_supernodes=num_clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app_attr="client_app.app:app",
            server_app_attr="server_app.app:app",
            server_app_context=context,
            backend_name="ray",
            backend_config=backend,
            app_dir=str(app_dir),
            is_app=True,
            verbose_logging=args.verbose,
        )
    summary = Path(cfg.output.run_dir) / "summary.json"
    if not summary.exists():
        print(f"fedtune: the simulation ended without a summary; see {cfg.output.run_dir}",
              file=sys.stderr)
        return 1
    done = json.loads(summary.read_text())  # every round skipped: the server said why
    skipped = done.get("skipped_rounds", [])
    return 1 if skipped and len(skipped) == done.get("rounds_run") else 0


def _run_model(run_dir: Path):
    """(the run's final model, tokenizer), read back by the algorithm that made the run (its
    name is in the run folder's ``config.json``)."""
    from fedtune.algorithms import REGISTRY

    try:
        name = json.loads((run_dir / "config.json").read_text())["train"]["algorithm"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"'{run_dir}' is not a fedtune run folder (no readable config.json); "
                          "pass a finished run folder.") from None
    algorithm = REGISTRY.get(name)
    if algorithm is None or algorithm.load_result is None:
        able = ", ".join(n for n, a in REGISTRY.items() if a.load_result is not None)
        raise ConfigError(f"'{run_dir}' is a run of '{name}', which leaves no single final "
                          f"model to load; pass a run of {able}.")
    try:
        return algorithm.load_result(run_dir)
    except OSError as err:  # the run never finished, or its files were moved
        raise ConfigError(f"'{run_dir}' has no saved {name} result ({err.__class__.__name__}); "
                          "pass a finished run folder.") from None


def generate_cmd(args: argparse.Namespace) -> int:
    from fedtune.data.example import Example
    from fedtune.data.template import render_prompt
    from fedtune.eval.generate import generate

    model, tokenizer = _run_model(Path(args.run))
    prompt = render_prompt(Example(instruction=args.prompt, input=args.input or "", output=""))
    print(generate(model, tokenizer, [prompt], args.max_new_tokens)[0].strip())
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from fedtune.models.saved import require_merged

    model, tokenizer = require_merged(*_run_model(Path(args.run)), args.run)
    out = Path(args.out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"merged model written to {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


def algorithms_cmd(args: argparse.Namespace) -> int:
    from fedtune.algorithms import REGISTRY
    from fedtune.strategies import fitting

    del args
    for algo in REGISTRY.values():
        how = (f"strategies: {', '.join(fitting(algo))}" if algo.federated
               else "baseline, runs in one process")
        print(f"{algo.name:14} {algo.summary} ({how}; objectives: {', '.join(algo.objectives)})")
    return 0


def config_cmd(args: argparse.Namespace) -> int:
    if args.markdown:
        from fedtune.config_help import markdown

        print(markdown(), end="")
        return 0
    for key, value in Config().to_flat().items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def dp_plan_cmd(args: argparse.Namespace) -> int:
    from fedtune.privacy.planner import run

    print(run(args.population, args.per_round, args.rounds, args.noise_multiplier,
              args.target_epsilon, args.delta))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtune", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a local multi-client simulation (Flower)")
    sim.add_argument("--recipe", help="TOML file of config keys")
    sim.add_argument("--algorithm", help="fedit (default), fedkseed, fedkseed-pro, ferret, "
                     "local (each client alone) or centralized (all data pooled); `fedtune "
                     "algorithms` lists them")
    sim.add_argument("--objective", help="sft (default) or dpo (preference pairs)")
    sim.add_argument("--init-adapter", help="FedIT: start from this PEFT adapter folder (DPO: "
                     "also the reference), e.g. runs/<sft-run>/adapter")
    sim.add_argument("--num-clients", type=int,
                     help=f"virtual clients (default: the recipe's, else {DEFAULT_CLIENTS})")
    sim.add_argument("--rounds", type=int, help="num-server-rounds")
    sim.add_argument("--model", help="'tiny', a local folder or a Hugging Face id")
    sim.add_argument("--data", help="'builtin' or a .json/.jsonl(.gz) file")
    sim.add_argument("--name", help="run name (folder prefix)")
    sim.add_argument("--output-dir", help="where run folders go (default: runs)")
    sim.add_argument("--run-config", help='overrides, e.g. "lr=1e-3 lora-r=8"')
    sim.add_argument("--resume", metavar="RUN",
                     help="continue the run folder RUN from its last complete round")
    sim.add_argument("--client-cpus", type=float, default=1.0)
    sim.add_argument("--client-gpus", type=float, default=None,
                     help="GPU share per client (default 0.5 when CUDA is present)")
    sim.add_argument("--verbose", action="store_true", help="Flower and Ray logs too")
    sim.set_defaults(func=simulate)

    gen = sub.add_parser("generate", help="answer a prompt with a run's final model")
    gen.add_argument("run")
    gen.add_argument("--prompt", required=True, help="the instruction")
    gen.add_argument("--input", help="optional input for the instruction")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.set_defaults(func=generate_cmd)

    exp = sub.add_parser("export", help="write a run's final model as a merged HF folder")
    exp.add_argument("run")
    exp.add_argument("out")
    exp.set_defaults(func=export_cmd)

    add_evaluate_command(sub)
    add_deploy_commands(sub)

    algos = sub.add_parser("algorithms", help="list the algorithms and the strategies that fit")
    algos.set_defaults(func=algorithms_cmd)

    conf = sub.add_parser("config", help="list every config key with its default")
    conf.add_argument("--markdown", action="store_true",
                      help="the config reference: a Markdown table of key, default, section, help")
    conf.set_defaults(func=config_cmd)

    plan = sub.add_parser("dp-plan", help="epsilon of a DP schedule, or the noise multiplier "
                          "reaching a target epsilon (the runs' accountant)")
    plan.add_argument("--population", metavar="N", help="clients that may ever take part")
    plan.add_argument("--per-round", metavar="m", help="clients sampled per round")
    plan.add_argument("--rounds", metavar="R", help="rounds released")
    plan.add_argument("--noise-multiplier", metavar="z", help="noise std / clip norm")
    plan.add_argument("--target-epsilon", metavar="EPS", help="find the smallest z reaching it")
    plan.add_argument("--delta", help="default 0.1 / N, as in runs")
    plan.set_defaults(func=dp_plan_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    """A user error (ConfigError) is one sentence, exit 2; --debug (anywhere) adds its trace."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    from fedtune.logs import DEBUG_ENV, quiet_third_party

    if debug:
        os.environ[DEBUG_ENV] = "1"  # the apps' logs keep user errors' tracebacks too
    quiet_third_party()
    try:
        return args.func(args)
    except ConfigError as err:
        if debug:
            traceback.print_exc()
        print(f"fedtune: {err}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``fedtune`` command: :func:`main`, its exit handlers, then the exit, without tearing
    down every module (1-2 s after a simulation has imported torch, transformers and Ray)."""
    try:
        code = main()
    except BrokenPipeError:  # `fedtune config | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    import atexit

    atexit._run_exitfuncs()  # what a normal exit runs: logging's flush, temp files, trackers
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
