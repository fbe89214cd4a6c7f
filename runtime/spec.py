"""What the engine knows about an actor class: its persisted name, handlers and policies.

A :class:`TypeSpec` is built once, when the class is defined (``Actor.__init_subclass__``), so
mistakes in a definition surface at import time with a message that says how to fix them.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .errors import InvalidArgumentsError, InvalidKeyError, UnknownHandlerError
from .typecheck import Check, classes_named, compile_check, explain, passes, resolve

#: Lifecycle hooks: async methods the runtime calls itself; never handlers.
HOOKS = frozenset({"on_create", "on_wake", "on_hibernate", "on_child_failed", "on_run_done"})

#: Longest key accepted, in UTF-8 bytes. Keys live in every file of the actor and in the
#: directory's primary index; a kilobyte leaves room for emails, URLs and composite ids.
DEFAULT_MAX_KEY_BYTES = 1024

#: Class attributes that subclasses set to configure their type.
_CONFIGURATION = frozenset(
    {
        "retry",
        "migrations",
        "restart_intensity",
        "durable",
        "http_create",
        "stream_max_entries",
        "stream_max_age",
    }
)

#: Words of the gateway's routes after ``/actors/{type}/{key}/`` (runtime/http/): a handler
#: with one of these names could not be told from the route, so it is refused at definition.
ROUTE_WORDS = frozenset({"signals", "streams", "watch"})

#: Default retention of each topic of an actor's stream (``Actor.stream_max_entries``,
#: ``Actor.stream_max_age``): enough for a long conversation's tokens and a week of
#: reconnecting clients, while a chatty actor's ``mailbox.db`` stays bounded.
DEFAULT_STREAM_MAX_ENTRIES = 10_000
DEFAULT_STREAM_MAX_AGE = 7 * 24 * 3600.0

#: Marker attribute set by ``@actors.query``.
QUERY_MARK = "__torpor_query__"
#: Attribute set by ``@actors.handler``: its :class:`HandlerOptions`.
HANDLER_MARK = "__torpor_handler__"


@attrs.frozen
class Retry:
    """A retry policy: how many attempts, and the exponential backoff between them.

    Used for failing messages (``Actor.retry``, or ``@actors.handler(retry=...)`` for one
    handler) and for steps (``self.step(name, retry, fn)``). The delay before attempt ``n + 1``
    is ``min(max_delay, initial_delay * multiplier ** (n - 1))``, spread by ``±jitter`` of
    itself. ``max_attempts=None`` retries forever. Attempt counts and the time of the next
    attempt are durable, for messages and for steps: a crash neither resets a backoff nor the
    count.
    """

    #: Attempts in all (1: no retry); ``None``: retry forever (a message's failed attempts
    #: still count toward the actor's restart intensity, and process deaths toward
    #: ``max_crashes``).
    max_attempts: int | None = attrs.field(default=3)
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    #: How many process deaths while a message runs alone after a restart dead-letter it. The
    #: death that made it suspect (in an ordinary batch) is not counted, so the process dies at
    #: most ``max_crashes + 1`` times on one message.
    max_crashes: int = attrs.field(default=5)
    #: Steps only: seconds one attempt may take before it counts as failed (``None``: no limit).
    #: A synchronous function cannot be interrupted: its worker thread is abandoned, and runs on.
    deadline: float | None = None

    @max_attempts.validator
    def _check_attempts(self, _attribute: Any, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"max_attempts must be an int >= 1, or None (got {value!r})")

    @max_crashes.validator
    def _check_crashes(self, _attribute: Any, value: int) -> None:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"max_crashes must be an int >= 1 (got {value!r})")

    def __attrs_post_init__(self) -> None:
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0 (got {value!r})")
        if self.deadline is not None and not (
            isinstance(self.deadline, int | float) and self.deadline > 0
        ):
            raise ValueError(
                f"deadline must be a number of seconds > 0 or None (got {self.deadline!r})"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1 (got {self.multiplier!r})")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1 (got {self.jitter!r})")

    def exhausted(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts use up this policy (never, for ``None``)."""
        return self.max_attempts is not None and attempts >= self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        try:
            base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        except OverflowError:  # (retrying forever: the thousandth attempt and beyond)
            base = self.max_delay
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


@attrs.frozen
class RestartIntensity:
    """OTP-style restart intensity: more than ``max_failures`` failed turns within ``period``
    seconds stop the actor (its messages are kept; ``Runtime.resume`` starts it again)."""

    max_failures: int = 10
    period: float = 60.0

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_failures, int) or self.max_failures < 1:
            raise ValueError(f"max_failures must be an int >= 1 (got {self.max_failures!r})")
        if not isinstance(self.period, int | float) or self.period <= 0:
            raise ValueError(f"period must be a number of seconds > 0 (got {self.period!r})")


@attrs.frozen
class HandlerOptions:
    """What ``@actors.handler(...)`` declares for one method (checked when it decorates)."""

    name: str | None = None
    retry: Retry | None = None
    validator: Callable[..., Any] | None = None


def check_handler_options(name: object, retry: object, validator: object) -> HandlerOptions:
    """The options of ``@actors.handler``, or ``TypeError``/``ValueError`` saying the fix."""
    if name is not None:
        check_handler_name(name)
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"@handler(retry=...) takes an actors.Retry (got {retry!r})")
    if validator is not None:
        if not callable(validator):
            raise TypeError(f"@handler(validator=...) takes a callable (got {validator!r})")
        if inspect.iscoroutinefunction(validator) or inspect.iscoroutinefunction(
            getattr(validator, "__call__", None)  # noqa: B004 (an async callable object)
        ):
            raise TypeError(
                f"@handler(validator={getattr(validator, '__qualname__', validator)}) is async; "
                "a validator runs in the sender before anything is stored and must be a plain "
                "def: check the arguments themselves there, and do I/O in the handler"
            )
    assert name is None or isinstance(name, str)
    return HandlerOptions(name, retry, validator)


def check_handler_name(name: object) -> None:
    """A persisted handler name: stored with every message, so it must never change."""
    if (
        not isinstance(name, str)
        or not name
        or "\0" in name
        or len(name) > 200
        or name.startswith("_")
    ):
        raise ValueError(
            "a handler's name must be a non-empty str of at most 200 characters, without NUL, "
            f"not starting with '_' (got {name!r})"
        )
    if name in HOOKS:
        raise ValueError(f"{name!r} is a lifecycle hook's name; give the handler another name")
    if name in ROUTE_WORDS:
        raise ValueError(
            f"{name!r} is a word of the HTTP gateway's routes (/actors/TYPE/KEY/{name}/...); "
            "give the handler another name"
        )


@attrs.frozen
class HandlerSpec:
    #: The persisted name: stored with each message (``@actors.handler(name=...)``, else the
    #: method's name).
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    is_query: bool
    #: The method's name in the class (the persisted name unless ``name=`` says otherwise).
    attribute: str = ""
    #: Its own retry policy (``None``: the actor type's).
    retry: Retry | None = None
    validator: Callable[..., Any] | None = None
    min_positional: int = attrs.field(init=False)
    max_positional: float = attrs.field(init=False)
    #: The checks of the positional parameters, in order (``None`` for one that takes
    #: anything); ``None`` when no parameter is checked: the call then costs nothing more.
    positional_checks: tuple[Check | None, ...] | None = attrs.field(init=False, eq=False)
    #: The same, split for the fast path: each parameter's classes (``object`` when
    #: unchecked), and the predicates on what lies inside (``None`` if there are none).
    positional_classes: tuple[Any, ...] | None = attrs.field(init=False, eq=False)
    positional_inner: tuple[Callable[[Any], bool] | None, ...] | None = attrs.field(
        init=False, eq=False
    )
    #: Each checked parameter's check and annotation, by name (``*args`` and ``**kwargs``
    #: check each of their values).
    named_checks: dict[str, tuple[Check, Any]] = attrs.field(init=False, eq=False)
    #: Some annotation could not be resolved when the class was defined (a name defined
    #: later): :meth:`resolve_annotations` tries again when a runtime opens.
    unresolved: bool = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Positional calls within these bounds always bind. A function with a keyword-only
        # parameter that has no default keeps the slow path (min_positional is out of reach).
        params = list(self.signature.parameters.values())[1:]
        kinds = inspect.Parameter
        positional = [
            p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        required = [p for p in positional if p.default is p.empty]
        simple = all(p.kind != kinds.KEYWORD_ONLY or p.default is not p.empty for p in params)
        variadic = any(p.kind == kinds.VAR_POSITIONAL for p in params)
        object.__setattr__(self, "min_positional", len(required) if simple else 1 << 30)
        object.__setattr__(self, "max_positional", float("inf") if variadic else len(positional))
        self.resolve_annotations()

    def resolve_annotations(self) -> None:
        """Compile the parameters' checks from their annotations (once per class, and again
        when a runtime opens for a handler whose annotations named something not defined)."""
        params = list(self.signature.parameters.values())[1:]
        kinds = inspect.Parameter
        named: dict[str, tuple[Check, Any]] = {}
        unresolved = False
        for param in params:
            annotation = resolve(param.annotation, self.fn)
            unresolved = unresolved or isinstance(annotation, str)
            check = compile_check(annotation)
            if check is not None:
                named[param.name] = (check, annotation)
        positional = tuple(
            named[p.name][0] if p.name in named else None
            for p in params
            if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        # With a check, calls with more positional arguments than named parameters (to
        # *args) take the slow path: max_positional is lowered to the named ones.
        checked = bool(named)
        if checked:
            object.__setattr__(self, "max_positional", len(positional))
        inner = tuple(None if c is None else c[1] for c in positional)
        object.__setattr__(self, "named_checks", named)
        object.__setattr__(self, "positional_checks", positional if checked else None)
        object.__setattr__(
            self,
            "positional_classes",
            tuple(object if c is None else c[0] for c in positional) if checked else None,
        )
        object.__setattr__(self, "positional_inner", inner if any(inner) else None)
        object.__setattr__(self, "unresolved", unresolved)

    def annotations(self) -> list[Any]:
        """The resolved annotations of the parameters and of the result."""
        found = [resolve(p.annotation, self.fn) for p in self.signature.parameters.values()]
        return [*found[1:], resolve(self.signature.return_annotation, self.fn)]

    def check_arguments(
        self, type_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not kwargs and self.min_positional <= len(args) <= self.max_positional:
            classes = self.positional_classes
            if classes is None:
                return  # the common case, without inspect's bind (about 15 µs)
            # An index, not zip: a typed call pays about 40 ns for an int, not 250.
            i = 0
            for value in args:
                if not isinstance(value, classes[i]):
                    break
                i += 1  # noqa: SIM113 (enumerate costs a tuple per argument; measured)
            else:
                inner = self.positional_inner
                if inner is None or all(
                    f is None or f(v) for f, v in zip(inner, args, strict=False)
                ):
                    return
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise InvalidArgumentsError(
                f"{type_name}.{self.name}{_public_signature(self.signature)}: {exc}"
            ) from None
        if self.named_checks:
            self._check_values(type_name, bound.arguments)

    def _check_values(self, type_name: str, arguments: dict[str, Any]) -> None:
        kinds = inspect.Parameter
        for name, value in arguments.items():
            found = self.named_checks.get(name)
            if found is None:
                continue
            check, annotation = found
            kind = self.signature.parameters[name].kind
            if kind == kinds.VAR_POSITIONAL:
                items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            elif kind == kinds.VAR_KEYWORD:
                items = list(value.items())
            else:
                items = [(name, value)]
            for label, item in items:
                if not passes(check, item):
                    raise InvalidArgumentsError(
                        f"{type_name}.{self.name}{_public_signature(self.signature)}: "
                        f"argument {label!r} {explain(annotation, item)}"
                    )

    def validate(self, type_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Run the handler's validator (the caller checks there is one): a refusal (it raised,
        or returned ``False``) is an :class:`InvalidArgumentsError` carrying its message."""
        assert self.validator is not None
        shown = getattr(self.validator, "__qualname__", repr(self.validator))
        try:
            verdict = self.validator(*args, **kwargs)
        except Exception as exc:
            raise InvalidArgumentsError(
                f"{type_name}.{self.name}: refused by its validator {shown}: {exc}"
            ) from exc
        if inspect.isawaitable(verdict):
            close = getattr(verdict, "close", None)
            if close is not None:
                close()  # (never awaited: no "coroutine was never awaited" warning)
            raise TypeError(
                f"the validator {shown} of {type_name}.{self.name} returned an "
                "awaitable; a validator must be a plain def"
            )
        if verdict is False:
            raise InvalidArgumentsError(
                f"{type_name}.{self.name}: refused by its validator {shown} (it returned False)"
            )


@attrs.frozen(eq=False)
class TypeSpec:
    """The engine's view of one actor class."""

    name: str
    cls: type
    #: By persisted name.
    handlers: dict[str, HandlerSpec]
    by_function: dict[Callable[..., Any], HandlerSpec]
    on_create: HandlerSpec
    retry: Retry
    migrations: tuple[str | Callable[..., Any], ...]
    has_on_wake: bool = False
    has_on_hibernate: bool = False
    restart_intensity: RestartIntensity = RestartIntensity()
    #: Replies and acknowledgements wait until the turn's commits are in the replica.
    durable: bool = False
    #: The retention of each topic of its stream: entries kept, and for how long (seconds).
    stream_max_entries: int = DEFAULT_STREAM_MAX_ENTRIES
    stream_max_age: float = DEFAULT_STREAM_MAX_AGE
    on_child_failed: HandlerSpec | None = None
    #: By the method's name in the class, where it differs from the persisted name.
    by_attribute: dict[str, HandlerSpec] = attrs.Factory(dict)
    #: Delivers a run's outcome to ``on_run_done`` (``Actor._torpor_run_done``).
    on_run_done: HandlerSpec | None = None
    #: An ``actors.Workflow``: each actor is one run, whose journal is kept once it finishes.
    workflow: bool = False

    def handler(self, method: Callable[..., Any] | str) -> HandlerSpec:
        """The handler that ``method`` (a function like ``Counter.incr``, or a name: the
        persisted one, or the method's) refers to."""
        if isinstance(method, str):
            spec = self.handlers.get(method) or self.by_attribute.get(method)
        else:
            spec = self.by_function.get(method)
            if spec is None:
                # A bound method, or a function inherited from a base class.
                fn = getattr(method, "__func__", method)
                name = getattr(fn, "__name__", None)
                candidate = None
                if isinstance(name, str):
                    candidate = self.by_attribute.get(name) or self.handlers.get(name)
                if candidate is not None and candidate.fn is fn:
                    spec = candidate
        if spec is None:
            shown = method if isinstance(method, str) else getattr(method, "__qualname__", method)
            known = ", ".join(sorted(self.handlers)) or "none"
            raise UnknownHandlerError(
                f"{shown!s} is not a handler of actor type {self.name!r} (its handlers: {known})"
            )
        return spec

    def retry_for(self, method: str) -> Retry:
        """The retry policy of messages to handler ``method`` (a persisted name): its own,
        else the type's."""
        handler = self.handlers.get(method)
        if handler is not None and handler.retry is not None:
            return handler.retry
        return self.retry

    def named_classes(self) -> list[type]:
        """The enums, dataclasses, attrs classes and pydantic models that the annotations of
        the handlers and hooks name (their parameters, results, and those classes' fields).

        Annotations that named something not defined when the class was (a class defined
        after it) are resolved again first: a runtime opens once every module is imported.
        """
        found: list[Any] = []
        for handler in (*self.handlers.values(), self.on_create, self.on_child_failed):
            if handler is None:
                continue
            if handler.unresolved:
                handler.resolve_annotations()
            found += handler.annotations()
        return classes_named(found)

    def requires_create_arguments(self) -> bool:
        try:
            self.on_create.signature.bind(None)
        except TypeError:
            return True
        return False


def _stream_retention(cls: type) -> tuple[int, float]:
    max_entries = getattr(cls, "stream_max_entries", DEFAULT_STREAM_MAX_ENTRIES)
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise TypeError(
            f"{cls.__qualname__}.stream_max_entries must be an int >= 1 (got {max_entries!r})"
        )
    max_age = getattr(cls, "stream_max_age", DEFAULT_STREAM_MAX_AGE)
    if (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not math.isfinite(max_age)
        or max_age <= 0
    ):
        raise TypeError(
            f"{cls.__qualname__}.stream_max_age must be a number of seconds > 0 (got {max_age!r})"
        )
    return max_entries, float(max_age)


def build_type_spec(cls: type, name: str | None, base: type) -> TypeSpec:  # noqa: C901 (one check per rule)
    """Introspect an ``Actor`` subclass; raise ``TypeError``/``ValueError`` on a bad definition."""
    type_name = name if name is not None else cls.__name__
    check_type_name(type_name)
    handlers: dict[str, HandlerSpec] = {}
    for attr_name in dir(cls):
        if attr_name.startswith("_") or attr_name in HOOKS:
            _refuse_marked(cls, attr_name)
            continue
        fn = inspect.getattr_static(cls, attr_name)
        if hasattr(base, attr_name):
            if attr_name not in _CONFIGURATION and fn is not inspect.getattr_static(
                base, attr_name
            ):
                raise TypeError(
                    f"{cls.__qualname__}.{attr_name} would override the Actor API; rename it"
                )
            continue
        if isinstance(fn, staticmethod | classmethod | property):
            continue
        is_query = bool(getattr(fn, QUERY_MARK, False))
        if not inspect.iscoroutinefunction(fn):
            if is_query:
                raise TypeError(f"@query {cls.__qualname__}.{attr_name} must be an async def")
            continue  # a plain public helper, not a handler
        spec = _handler_spec(cls, attr_name, fn, is_query)
        other = handlers.get(spec.name)
        if other is not None:
            raise TypeError(
                f"{cls.__qualname__}.{other.attribute} and {cls.__qualname__}.{attr_name} share "
                f"the persisted handler name {spec.name!r}; give one of them another "
                "@actors.handler(name=...)"
            )
        handlers[spec.name] = spec
    by_attribute = _aliases(cls, handlers)
    on_create = inspect.getattr_static(cls, "on_create")
    if not inspect.iscoroutinefunction(on_create):
        raise TypeError(f"{cls.__qualname__}.on_create must be an async def")
    intensity = getattr(cls, "restart_intensity", RestartIntensity())
    if not isinstance(intensity, RestartIntensity):
        raise TypeError(
            f"{cls.__qualname__}.restart_intensity must be an actors.RestartIntensity "
            f"(got {intensity!r})"
        )
    child_hook = inspect.getattr_static(cls, "on_child_failed")
    if not inspect.iscoroutinefunction(child_hook):
        raise TypeError(f"{cls.__qualname__}.on_child_failed must be an async def")
    run_done_hook = inspect.getattr_static(cls, "on_run_done", None)
    if run_done_hook is not None and not inspect.iscoroutinefunction(run_done_hook):
        raise TypeError(f"{cls.__qualname__}.on_run_done must be an async def")
    run_done = getattr(cls, "_torpor_run_done", None)
    durable = getattr(cls, "durable", False)
    if not isinstance(durable, bool):
        raise TypeError(f"{cls.__qualname__}.durable must be True or False (got {durable!r})")
    if not isinstance(getattr(cls, "http_create", True), bool):
        raise TypeError(f"{cls.__qualname__}.http_create must be True or False")
    max_entries, max_age = _stream_retention(cls)
    retry = getattr(cls, "retry", Retry())
    if not isinstance(retry, Retry):
        raise TypeError(f"{cls.__qualname__}.retry must be an actors.Retry (got {retry!r})")
    migrations = tuple(getattr(cls, "migrations", ()))
    for index, step in enumerate(migrations):
        if inspect.iscoroutinefunction(step):
            raise TypeError(
                f"{cls.__qualname__}.migrations[{index}] is an async function; migrations run "
                "synchronously inside the wake-up transaction, so make it a plain def"
            )
        if not (isinstance(step, str) or callable(step)):
            raise TypeError(
                f"{cls.__qualname__}.migrations[{index}] must be an SQL string or a callable "
                f"taking the actor's Sql (got {step!r})"
            )
    return TypeSpec(
        name=type_name,
        cls=cls,
        handlers=handlers,
        by_function={h.fn: h for h in handlers.values()},
        on_create=HandlerSpec(
            name="on_create",
            fn=on_create,
            signature=_signature(on_create),
            is_query=False,
        ),
        retry=retry,
        migrations=migrations,
        restart_intensity=intensity,
        durable=durable,
        stream_max_entries=max_entries,
        stream_max_age=max_age,
        on_child_failed=HandlerSpec(
            name="on_child_failed",
            fn=child_hook,
            signature=_signature(child_hook),
            is_query=False,
        ),
        on_run_done=(
            HandlerSpec(
                name="on_run_done", fn=run_done, signature=_signature(run_done), is_query=False
            )
            if run_done is not None
            else None
        ),
        has_on_wake=_overrides(cls, base, "on_wake"),
        has_on_hibernate=_overrides(cls, base, "on_hibernate"),
        by_attribute=by_attribute,
    )


def _handler_spec(cls: type, attr_name: str, fn: Callable[..., Any], is_query: bool) -> HandlerSpec:
    """The handler of method ``attr_name``, with its ``@actors.handler`` options if any."""
    options = getattr(fn, HANDLER_MARK, None) or HandlerOptions()
    if is_query and options.retry is not None:
        raise TypeError(
            f"@query {cls.__qualname__}.{attr_name} runs once, on committed state, and is never "
            "retried: drop @actors.handler(retry=...)"
        )
    if options.name is None and attr_name in ROUTE_WORDS:
        raise TypeError(
            f"{cls.__qualname__}.{attr_name}: {attr_name!r} is a word of the HTTP gateway's "
            f"routes (/actors/TYPE/KEY/{attr_name}/...); rename the method, or give it another "
            "persisted name with @actors.handler(name=...)"
        )
    return HandlerSpec(
        name=options.name or attr_name,
        fn=fn,
        signature=_signature(fn),
        is_query=is_query,
        attribute=attr_name,
        retry=options.retry,
        validator=options.validator,
    )


def _aliases(cls: type, handlers: dict[str, HandlerSpec]) -> dict[str, HandlerSpec]:
    """Handlers by method name, where it is not their persisted name; a method name that is
    another handler's persisted name would make a string ambiguous."""
    aliases: dict[str, HandlerSpec] = {}
    for spec in handlers.values():
        if spec.attribute == spec.name:
            continue
        other = handlers.get(spec.attribute)
        if other is not None:
            raise TypeError(
                f"{cls.__qualname__}.{spec.attribute} is persisted as {spec.name!r}, but "
                f"{spec.attribute!r} is the persisted name of {cls.__qualname__}."
                f"{other.attribute}: a message naming {spec.attribute!r} would be ambiguous; "
                "rename one of them"
            )
        aliases[spec.attribute] = spec
    return aliases


def _refuse_marked(cls: type, attr_name: str) -> None:
    """``@actors.handler`` on a private method or a lifecycle hook: it would never be one."""
    fn = inspect.getattr_static(cls, attr_name, None)
    if getattr(fn, HANDLER_MARK, None) is not None:
        raise TypeError(
            f"@actors.handler on {cls.__qualname__}.{attr_name}: "
            + (
                "lifecycle hooks are not handlers"
                if attr_name in HOOKS
                else "handlers are public methods; drop the leading underscore"
            )
        )


def _overrides(cls: type, base: type, name: str) -> bool:
    mine = inspect.getattr_static(cls, name, None)
    if mine is None or mine is inspect.getattr_static(base, name, None):
        return False
    if not inspect.iscoroutinefunction(mine):
        raise TypeError(f"{cls.__qualname__}.{name} must be an async def")
    return True


def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    # Resolved annotations read better in error messages ("by: int", not "by: 'int'"); a name
    # that cannot be resolved yet (a class defined later) keeps its text.
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:
        return inspect.signature(fn)


def check_type_name(name: object) -> None:
    if not isinstance(name, str) or not name or "\0" in name or len(name) > 200:
        raise ValueError(
            f"an actor type name must be a non-empty str of at most 200 characters without NUL "
            f"(got {name!r})"
        )


def check_key(key: object, max_key_bytes: int = DEFAULT_MAX_KEY_BYTES) -> str:
    """Return ``key`` if it is a valid actor key; raise :class:`InvalidKeyError` otherwise."""
    if not isinstance(key, str):
        raise InvalidKeyError(
            f"an actor key must be a str (got {key!r} that is a {type(key).__name__})"
        )
    if not key:
        raise InvalidKeyError("an actor key must not be empty")
    if "\0" in key:
        raise InvalidKeyError(f"an actor key must not contain NUL (got {key!r})")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > max_key_bytes:
        raise InvalidKeyError(
            f"an actor key must be at most {max_key_bytes} UTF-8 bytes (got {size} bytes)"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKeyError(f"an actor key must be valid Unicode text (got {key!r})") from None
    return key


def _public_signature(sig: inspect.Signature) -> str:
    params = list(sig.parameters.values())[1:]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def check_durable_types(specs: Iterable[TypeSpec], *, has_replica: bool) -> None:
    """Refuse ``durable = True`` types in a runtime without a replica.

    ``durable = True`` promises that a reply or an acknowledgement means the turn's commits are
    in the replica; without one that promise cannot be kept, and running the type as
    non-durable would break it silently.
    """
    if has_replica:
        return
    durable = sorted(spec.name for spec in specs if spec.durable)
    if durable:
        names = ", ".join(repr(name) for name in durable)
        raise ValueError(
            f"actor type{'s' if len(durable) > 1 else ''} {names} "
            f"{'are' if len(durable) > 1 else 'is'} durable = True (replies wait until the "
            "turn's commits are in the replica), but open_runtime was given no replica; pass "
            "replica=actors.DirectoryStore(...) or actors.S3Store(...), or set durable = False "
            "on the class to answer once commits are on the local disk"
        )


def index_types(specs: Sequence[TypeSpec]) -> dict[str, TypeSpec]:
    by_name: dict[str, TypeSpec] = {}
    for spec in specs:
        other = by_name.get(spec.name)
        if other is not None and other is not spec:
            raise ValueError(
                f"actor types {other.cls.__qualname__} and {spec.cls.__qualname__} share the "
                f"persisted name {spec.name!r}; give one of them another name=..."
            )
        by_name[spec.name] = spec
    return by_name
