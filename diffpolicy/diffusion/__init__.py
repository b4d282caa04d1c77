"""The shared diffusion core: schedules, embeddings, the temporal UNet, samplers."""
from diffpolicy.diffusion.schedule import NoiseSchedule, NoPropSchedule, noprop_schedule

__all__ = ["NoiseSchedule", "NoPropSchedule", "noprop_schedule"]
