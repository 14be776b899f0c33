"""A space from the name a user gives it: one of ce-ray's (``ce_ray.theory.spaces.SPACES``) with
its options, or your own ``member(n)`` named ``MODULE:CALLABLE`` with its input shape -- the one
place a :class:`~ce_ray.theory.member.MemberSpace` is built (it imports torch and the user's
module, so it is imported only when a member is named).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields

from ce_ray.choices import PARAMETERISATIONS, check_choice
from ce_ray.theory.spaces import SPACES, Space

#: What only your own member takes: the command line's flag -> the keyword below.
MEMBER_FLAGS = {
    "--input-shape": "input_shape",
    "--fan-in-sum": "fan_in_sum_from",
    "--network": "network_from",
    "--parameterisation": "parameterisation",
}


def make_space(
    name: str,
    spelled: Mapping[str, str] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    fan_in_sum_from: str | None = None,
    network_from: str | None = None,
    parameterisation: str | None = None,
    **options: int,
) -> Space:
    """The space called ``name`` with construction ``options`` (e.g. ``depth=6`` for fc), or
    for ``MODULE:CALLABLE`` your own member(n) reading examples of ``input_shape``, with S(n)
    from ``fan_in_sum_from``, the trained network from ``network_from`` and how it is
    written, ``parameterisation`` (``ntk`` or ``standard``), if given (``MemberSpace``).

    ``spelled`` maps an option to how the caller names it (the command line: ``--depth``),
    for the error message.

    Raises:
        ValueError: unknown space, an option the space does not take, a member without its
            input shape, or a member's option for a built-in space.

    >>> space = make_space("cifar-resnext29", num_classes=10)
    >>> space.label(37, 10), int(space.num_params(37, 10))
    ('37x10d', 13743646)
    >>> round(float(make_space("fc", depth=3).fan_in_sum(10)), 6)  # 1/784 + 2/10
    0.201276
    >>> make_space("fc", spatial=3)
    Traceback (most recent call last):
    ValueError: space 'fc' does not take spatial (it takes: input_dim, depth, num_classes)
    >>> make_space("fc", input_shape=(8,))
    Traceback (most recent call last):
    ValueError: --input-shape is for your own member (--space MODULE:CALLABLE)
    """
    if ":" in name:
        from ce_ray.theory.member import MemberSpace

        if input_shape is None:
            raise ValueError(f"--space {name} needs the shape of one example (--input-shape)")
        return MemberSpace(
            name,
            tuple(input_shape),
            fan_in_sum_from or "",
            network_from or "",
            check_choice("--parameterisation", parameterisation or "ntk", PARAMETERISATIONS),
        )
    check_no_member_options(
        input_shape=input_shape,
        fan_in_sum_from=fan_in_sum_from,
        network_from=network_from,
        parameterisation=parameterisation,
    )
    if name not in SPACES:
        raise ValueError(f"unknown space {name!r}; valid spaces: {', '.join(SPACES)}")
    cls = SPACES[name]
    spell = (spelled or {}).get
    allowed = [f.name for f in fields(cls)]
    unknown = [option for option in options if option not in allowed]
    if unknown:
        takes = ", ".join(spell(f, f) for f in allowed if not spelled or f in spelled)
        raise ValueError(
            f"space {name!r} does not take {', '.join(spell(f, f) for f in unknown)} "
            f"(it takes: {takes or 'no options'})"
        )
    return cls(**options)


def check_no_member_options(**given: object) -> None:
    """ValueError naming the member-only flags (:data:`MEMBER_FLAGS`) among ``given`` that
    are set, when no member is named."""
    flags = [flag for flag, key in MEMBER_FLAGS.items() if given.get(key) is not None]
    if flags:
        verb = "is" if len(flags) == 1 else "are"
        raise ValueError(f"{', '.join(flags)} {verb} for your own member (--space MODULE:CALLABLE)")


def your_member(
    name: str | None,
    input_shape: Sequence[int] | None = None,
    fan_in_sum_from: str | None = None,
    network_from: str | None = None,
    parameterisation: str | None = None,
) -> Space | None:
    """``--space MODULE:CALLABLE`` of fit-alpha and the sweep, which take a preset's space when
    it is not given (None; the member's own flags are then refused)."""
    if name is None:
        check_no_member_options(
            input_shape=input_shape,
            fan_in_sum_from=fan_in_sum_from,
            network_from=network_from,
            parameterisation=parameterisation,
        )
        return None
    return make_space(
        name,
        input_shape=input_shape,
        fan_in_sum_from=fan_in_sum_from,
        network_from=network_from,
        parameterisation=parameterisation,
    )
