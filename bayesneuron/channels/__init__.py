"""Channel layer: pure kinetics. Rates are declared once, as rate forms
(:mod:`~bayesneuron.channels.rates`), and every backend evaluates the same objects."""

from bayesneuron.channels.base import (
    Channel,
    Gate,
    InfTauGate,
    Kinetics,
    Leak,
    RateChannel,
    q10_factor,
)
from bayesneuron.channels.cortical import Ih, Kdr, Km, Kv31, NaT, cortical_channels
from bayesneuron.channels.hh import HHPotassium, HHSodium, hh_channels
from bayesneuron.channels.paper import PaperLeak, PaperPotassium, PaperSodium, paper_channels
from bayesneuron.channels.rates import (
    Constant,
    Exponential,
    Linoid,
    Rate,
    Sigmoid,
    Softplus,
    vtrap,
)

__all__ = [
    "Channel",
    "Constant",
    "Exponential",
    "Gate",
    "HHPotassium",
    "HHSodium",
    "Ih",
    "InfTauGate",
    "Kdr",
    "Kinetics",
    "Km",
    "Kv31",
    "Leak",
    "Linoid",
    "NaT",
    "PaperLeak",
    "PaperPotassium",
    "PaperSodium",
    "Rate",
    "RateChannel",
    "Sigmoid",
    "Softplus",
    "cortical_channels",
    "hh_channels",
    "paper_channels",
    "q10_factor",
    "vtrap",
]
