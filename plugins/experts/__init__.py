"""Built-in experts: the token-clocked Mamba SISO scan, memory bank and retrieval, and the h-clocked
attention probe, MLP probe and SIREN."""
import parallax

from .attention_probe import AttentionProbe
from .mamba_siso import MambaSISO
from .memory_bank import MemoryBank
from .mlp_probe import MLPProbe
from .retrieval import Retrieval
from .siren import Siren


@parallax.hookimpl
def register_experts(register):
    register("mamba_siso", MambaSISO)
    register("attention_probe", AttentionProbe)
    register("mlp_probe", MLPProbe)
    register("siren", Siren)
    register("memory_bank", MemoryBank)
    register("retrieval", Retrieval)
