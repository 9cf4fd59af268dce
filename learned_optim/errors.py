"""Exceptions raised by learned_optim. All derive from standard Python exceptions."""


class WeightsError(ValueError):
    """A weights directory, file or tensor set is missing, corrupted or does not fit its config."""


class UnknownArchitectureError(WeightsError, KeyError):
    """A config names an architecture this version of learned_optim does not provide."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is neither in the data folder nor downloadable (offline, or the mirrors failed)."""
