"""The worker's side of config evolution: the layout registry ``P:layouts`` and the
decoding of stored states written with another feature layout (:mod:`models.migrate`).

:class:`StateDecoder` registers the running configuration's layout (once), keeps the
registry in memory, re-reads it when a loaded state names a layout not known yet (a
worker with another configuration during a rolling restart), and decodes each loaded
state, mapped onto the running layout by feature name when it was written with another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from models.engine import Engine
from models.layout import FeatureLayout
from models.migrate import LayoutMigrator, stored_layout
from models.state import ProfileState
from stream.worker.profile_store import LoadedProfile

__all__ = ["StateDecoder"]

log = logging.getLogger(__name__)


class StateDecoder:
    """Decodes loaded profile states for one engine (see the module docstring).

    Parameters
    ----------
    engine
        The running engine (its featurizer's layout is the current one).
    store
        The Redis store (``register_layout`` and ``layouts`` of
        :class:`~stream.worker.model_store.ModelStore`).
    """

    def __init__(self, engine: Engine, store: Any) -> None:
        self.engine = engine
        self.store = store
        self.goal_names = [g.name for g in engine.config.goals]
        self.migrator = LayoutMigrator(engine.featurizer.layout)
        self.registered = False

    async def load(self) -> None:
        """Register the running layout in ``P:layouts`` (first call) and read the registry."""
        if self.registered:
            raw = await self.store.layouts()
        else:
            current = self.migrator.current
            raw = await self.store.register_layout(current.fingerprint, current.to_json())
            self.registered = True
        known: dict[str, FeatureLayout] = {}
        for name, value in raw.items():
            try:
                known[name] = FeatureLayout.from_json(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("layout registry entry %s is not a layout (%s): ignored", name, exc)
        self.migrator.add(known)

    async def ensure(self) -> None:
        """:meth:`load` unless done."""
        if not self.registered:
            await self.load()

    async def learn(self, raws: Iterable[bytes | None]) -> None:
        """Re-read the registry if a state's layout is not known here (another worker's)."""
        migrator = self.migrator
        marker = migrator.marker
        for raw in raws:
            # unreadable bytes name "": decoding them says why
            if raw and marker not in raw and not migrator.surely_known(raw):
                if not migrator.knows(stored_layout(raw)):
                    await self.load()
                    return

    def decode(self, row: LoadedProfile) -> ProfileState:
        """A loaded profile's state, mapped onto the current layout if written with another.

        The ``tf`` positions of such a profile follow its old layout: ``row.top_factors``
        is corrected to the names they meant.

        Raises
        ------
        models.migrate.UnknownLayout
            The registry lacks the state's layout.
        ValueError
            The state is not readable.
        """
        assert row.state is not None
        state = ProfileState.from_bytes(row.state, self.goal_names)
        migrator = self.migrator
        if state.layout == migrator.fingerprint:
            return state
        old = migrator.layout_of(state.layout)
        state = migrator.migrate(state)
        if old is not None and row.top_factors:
            now = self.engine.featurizer.index
            names = old.feature_names()
            row.top_factors = {
                g: tuple(names[now[f]] if f in now and now[f] < len(names) else f for f in fs)
                for g, fs in row.top_factors.items()
            }
        return state

    async def read(self, raw: bytes) -> ProfileState:
        """:meth:`decode` of one stored state, for the views."""
        await self.ensure()
        await self.learn([raw])
        return self.decode(LoadedProfile(raw, "", -1))
