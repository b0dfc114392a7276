"""A name -> class registry filled by a class decorator (classical baselines, QA student methods)."""

from __future__ import annotations

from domainlm.errors import DomainLMError


class Registry:
    """`what` names the kind in messages; `attribute` is set on each class to the name it is registered as."""

    def __init__(self, what: str, attribute: str = "name", error: type[Exception] = DomainLMError):
        self.what, self.attribute, self.error = what, attribute, error
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator adding the class under `name`; a duplicate name is an error."""

        def add(cls):
            if name in self._classes:
                raise DomainLMError(f"{self.what} {name!r} is already registered")
            setattr(cls, self.attribute, name)
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        return list(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise self.error(f"unknown {self.what} {name!r}; choose from {', '.join(self._classes)}")
        return self._classes[name]
