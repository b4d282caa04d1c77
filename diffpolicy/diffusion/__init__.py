"""The shared diffusion core: schedules, embeddings, the temporal UNet, samplers."""
from diffpolicy.diffusion.sampling import DiffusionSampler, sample
from diffpolicy.diffusion.schedule import NoiseSchedule, NoPropSchedule, noprop_schedule
from diffpolicy.diffusion.unet1d import ConditionalUnet1D

__all__ = ["ConditionalUnet1D", "DiffusionSampler", "NoPropSchedule", "NoiseSchedule",
           "noprop_schedule", "sample"]
