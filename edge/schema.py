"""What every spec read from a file shares: the pydantic base and the one-line error.

Each concept read from a file (the bundle manifest and its sections, the preprocessing spec, the
detector spec, the training config) is declared once, as a pydantic model with its bounds on the
fields, and that model is the type the code uses. A file goes through `model_validate` once, at the
edge; a wrong value is one line naming the field (`one_line`), never a crash later.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer


class Spec(BaseModel):
    """A declared spec: an unknown key is an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    # Fields added after files were written: left out of the serialised form while they hold their
    # default, which is what older files meant by leaving them out, so those files (and the contracts
    # sealed from them) keep their exact bytes.
    omitted_at_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_new_defaults(self, handler) -> dict[str, Any]:
        data = handler(self)
        for name in self.omitted_at_default:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data

    def replace(self, **changes):
        """A copy with `changes`, validated as any other instance (pydantic's model_copy is not)."""
        return self.model_validate({**dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The serialised form: what manifest.json and config.json hold, and what is sealed."""
        return self.model_dump()


class FrozenSpec(Spec):
    """A spec that does not change once made (it may be shared between threads and hashed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def one_line(exc: ValidationError) -> str:
    """The first problem of `exc` as `field.path: what is wrong (got value)`, and how many more."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = (
        f" (got {got!r})"
        if got is not None and not isinstance(got, dict) and len(repr(got)) < 60 and repr(got) not in message
        else ""
    )
    more = f"; {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
    return f"{where + ': ' if where else ''}{message}{shown}{more}"
