"""NoProp on Fashion-MNIST: block-local denoising training (DT, CT), backprop baselines,
block-parallel training and the benchmark table.  See ``docs/noprop.md``."""
from diffpolicy.noprop.backprop import BackboneClassifier, BackpropDT
from diffpolicy.noprop.ct import MonotoneSchedule, NoPropCT
from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.fm import NoPropFM

__all__ = ["BackboneClassifier", "BackpropDT", "MonotoneSchedule", "NoPropCT", "NoPropDT", "NoPropFM"]
