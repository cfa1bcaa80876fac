"""Full fine-tuning with FedAvg: every client trains every weight and sends them all.

The baseline that FedIT (LoRA) and FedKSeed (seeds) save bytes against, and the worked example
of README's "Extending fedtune": this folder plus one line in ``fedtune.algorithms.REGISTRY``.
"""

from fedtune.algorithms.base import Algorithm


def client(cfg):
    from fedtune.algorithms.full_ft.client import FullClient

    return FullClient(cfg)


def server(cfg):
    from fedtune.algorithms.full_ft.server import FullServer

    return FullServer(cfg)


def load_result(run_dir):
    from fedtune.models.saved import load_model_folder

    return load_model_folder(run_dir / "model")


FULL_FT = Algorithm(name="full-ft", summary="every weight trained and sent, FedAvg'd",
                    payload="arrays", client=client, server=server, objectives=("sft",),
                    load_result=load_result)
