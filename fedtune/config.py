"""One typed configuration, built from Flower's flat ``run_config``.

Every key is ``kebab-case`` and unique across sections, so the same names work in
``pyproject.toml``'s ``[tool.flwr.app.config]``, in ``--run-config "key=value ..."`` and in
recipe files. Each section's dataclass and its checks live beside the code it configures; this
module only converts flat <-> typed and checks what spans sections. What depends on the chosen
algorithm (its name, the strategies that fit it, the sections it reads) is checked by
:func:`fedtune.algorithms.resolve`.

The framework's own sections are listed here; a method's section is declared where the method
lives and found, not listed: an algorithm package's ``config.py`` exports ``SECTION = (name,
dataclass)``, and :mod:`fedtune.strategies.config` exports the strategies' ``SECTIONS``. The
registries say which algorithm or strategy reads which section.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import math
import pkgutil
import shlex
import tomllib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from fedtune.data.config import DataConfig
from fedtune.errors import ConfigError, require
from fedtune.eval.config import EvalConfig
from fedtune.flower.config import ServerConfig
from fedtune.models.config import ModelConfig
from fedtune.privacy.config import PrivacyConfig
from fedtune.results import OutputConfig
from fedtune.secagg.config import SecAggConfig
from fedtune.strategies.config import SECTIONS as STRATEGY_SECTIONS
from fedtune.strategies.config import StrategySection
from fedtune.train.config import TrainConfig

if TYPE_CHECKING:
    from fedtune.algorithms.fedit.config import LoraSection
    from fedtune.algorithms.fedkseed.config import ZOConfig
    from fedtune.algorithms.ferret.config import FerretConfig
    from fedtune.strategies.config import SeedsSection

__all__ = ["Config", "ConfigError", "parse_overrides"]

#: keys that were renamed: the old name is refused with a sentence naming the new one
RENAMED = {"zo-cache-dir": "cache-dir", "zo-equal-weights": "seeds-equal-weights",
           "zo-server-momentum": "seeds-server-momentum", "zo-robust-clip": "seeds-robust-clip"}


def _algorithm_sections() -> dict[str, type]:
    """``SECTION`` of every algorithm package that has a ``config.py``, by package name."""
    spec = importlib.util.find_spec("fedtune.algorithms")
    out: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(spec.submodule_search_locations)):
        if info.ispkg:
            try:
                module = importlib.import_module(f"fedtune.algorithms.{info.name}.config")
            except ModuleNotFoundError:
                continue  # a package without a section
            name, cls = module.SECTION
            out[name] = cls
    return out


#: the framework's sections, then the strategies', then the algorithms' (found)
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    **STRATEGY_SECTIONS,
    "privacy": PrivacyConfig,
    "secagg": SecAggConfig,
    "server": ServerConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    **_algorithm_sections(),
}
_OWN = ("model", "data", "train", "strategy", "privacy", "secagg", "server", "eval", "output")


def _key(name: str) -> str:
    return name.replace("_", "-")


@dataclass
class Config:
    """The resolved configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategySection = field(default_factory=StrategySection)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: the method sections (``seeds``, ``lora``, ``zo``, ``ferret``, ...), read as attributes
    methods: dict[str, Any] = field(default_factory=lambda: {
        name: cls() for name, cls in SECTIONS.items() if name not in _OWN})

    if TYPE_CHECKING:  # the sections found today, typed for the type checker
        seeds: SeedsSection
        lora: LoraSection
        zo: ZOConfig
        ferret: FerretConfig

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__.get("methods")
        if methods is not None and name in methods:
            return methods[name]
        raise AttributeError(f"Config has no section '{name}'")

    # ---- flat <-> typed ------------------------------------------------------------------
    @staticmethod
    def keys() -> dict[str, tuple[str, dataclasses.Field]]:
        """Flat key -> (section name, dataclass field)."""
        out: dict[str, tuple[str, dataclasses.Field]] = {}
        for section, cls in SECTIONS.items():
            for f in fields(cls):
                out[_key(f.name)] = (section, f)
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Config:
        """Build from a flat mapping (Flower's run_config); unknown keys and bad values raise."""
        cfg = cls()
        known = cls.keys()
        for key, value in flat.items():
            if key in RENAMED:
                raise ConfigError(f"{key} is now called {RENAMED[key]}; rename it.")
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
                raise ConfigError(
                    f"Unknown config key '{key}'.{suggestion} "
                    "Run `fedtune config` to list every key with its default."
                )
            section, f = known[key]
            setattr(getattr(cfg, section), f.name, _coerce(key, value, f.type))
        cfg.resolve_auto()
        cfg.validate()
        return cfg

    def resolve_auto(self) -> None:
        """Replace the 0 = auto defaults that depend on the objective or the model.

        DPO learns from a weaker signal than SFT (which of two answers, not the answer), so
        its default run is longer; on the `tiny` preset's random start, beta 0.5 makes it
        learn faster than TRL's usual 0.1 (0.93 vs 0.79 held-out reward accuracy after 20
        rounds of the default run).
        """
        if self.server.num_server_rounds == 0:
            self.server.num_server_rounds = 20 if self.train.objective == "dpo" else 12
        if self.train.dpo_beta == 0:
            self.train.dpo_beta = 0.5 if self.model.model == "tiny" else 0.1

    def validate(self) -> None:
        """Every number is finite, then every section's own checks (the algorithm's are in
        fedtune.algorithms.resolve). ``inf`` and ``nan`` are floats to Python and TOML, but no
        setting means them: ``lr=inf`` would drop every reply as NaN and still exit 0."""
        for key, (section, f) in self.keys().items():
            value = getattr(getattr(self, section), f.name)
            require(not isinstance(value, float) or math.isfinite(value),
                    f"{key}={value} is not a finite number; give a finite value (the default "
                    f"is {getattr(SECTIONS[section](), f.name)}).")
        for section in SECTIONS:
            getattr(self, section).validate()

    def to_flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (section, f) in self.keys().items():
            out[key] = getattr(getattr(self, section), f.name)
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Section name -> its values, in :data:`SECTIONS`' order."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @property
    def name(self) -> str:
        return self.output.run_name or f"{self.train.algorithm}-{self.train.objective}"


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Convert a run_config value (TOML scalar or string from the command line) to the type."""
    t = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if not isinstance(value, str | int | float) or (isinstance(value, bool) and t != "bool"):
            raise ValueError  # a list, table, None or bytes; true/false for a number
        if t == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if t == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if not -(2**63) <= int(value) < 2**63:  # no setting means more; int64 everywhere
                raise ValueError
            return int(value)
        if t == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: float(10**400)
        article = "an" if t == "int" else "a"
        raise ConfigError(f"{key}={_shown(value)} is not a valid {t}; give {article} {t} "
                          "value.") from None


def _shown(value: Any) -> str:
    """``value`` for an error message, at most 40 characters (a huge int as ``~1eN``: str()
    refuses ints over 4300 digits)."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"{'-' if value < 0 else ''}~1e{int(abs(value).bit_length() * math.log10(2))}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse ``"key=value key2='text'"`` (Flower's --run-config syntax) into a dict."""
    out: dict[str, Any] = {}
    try:
        items = shlex.split(text)
    except ValueError as err:  # "No closing quotation"
        raise ConfigError(f"--run-config \"{_shown(text)}\" cannot be split into key=value "
                          f"items ({err}); close every quote.") from None
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' has no '='; write it as key=value.")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except (tomllib.TOMLDecodeError, ValueError):  # ValueError: an int of > 4300 digits
            out[key.strip()] = raw  # bare word, e.g. model=tiny
    return out
