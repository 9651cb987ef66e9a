"""Errors the engine raises for bad input: each says what was expected, what was found and how to fix it."""


class FitcycleError(Exception):
    """Base class for errors a user can act on."""


class DataError(FitcycleError, ValueError):
    """The images, labels or split rules cannot make a usable dataset."""


class PretrainedWeightsNotFound(FitcycleError, FileNotFoundError):
    """Pretrained weights were asked for but none of the places tried holds them."""


class WeightsMismatch(FitcycleError, ValueError):
    """A weights file does not fit the architecture it was loaded into."""


class BundleError(FitcycleError, ValueError):
    """An export bundle is missing, incomplete or inconsistent."""


class CheckpointError(FitcycleError, ValueError):
    """A checkpoint cannot resume the run it was given to."""


class WeightsRefused(FitcycleError, ValueError):
    """A file offered to the fleet's weights store is not one it accepts (name, hash or content)."""
