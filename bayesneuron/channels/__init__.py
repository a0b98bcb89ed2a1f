"""Channel layer: pure kinetics. Rates are declared once, as rate forms
(:mod:`~bayesneuron.channels.rates`), and every backend evaluates the same objects."""

from bayesneuron.channels.base import Channel, Gate, Kinetics, Leak, RateChannel, q10_factor
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
    "Kinetics",
    "Leak",
    "Linoid",
    "PaperLeak",
    "PaperPotassium",
    "PaperSodium",
    "Rate",
    "RateChannel",
    "Sigmoid",
    "Softplus",
    "hh_channels",
    "paper_channels",
    "q10_factor",
    "vtrap",
]
