"""Errors a user can act on. The CLI prints their message without a traceback."""

from __future__ import annotations


class TunelabError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class DataError(TunelabError):
    """Bad input data. The message names the file, the record and the field."""

    def __init__(self, file: str, record: int | str | None, field: str | None, problem: str):
        self.file, self.record, self.field, self.problem = str(file), record, field, problem
        where = self.file
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class ModelNotFound(TunelabError):
    pass


class ConfigError(TunelabError):
    pass
