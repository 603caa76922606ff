"""The planted behaviour model of the synthetic data set: who visits, views, adds and buys when.

:func:`simulate` runs the model day by day and returns a columnar :class:`EventLog`;
:mod:`models.synthetic` renders it as XDM ExperienceEvents. :data:`GROUND_TRUTH` states,
in the product's feature names, the drivers the model plants, so that tests and
benchmarks can check that the product recovers them.

Planted model
-------------
Profiles
    Each profile ``p-<k>`` has a base session rate (sessions per day while active, log-normal:
    most profiles visit a few times in the whole period, a few visit daily), a preferred
    device and a favourite product category. About 60 % are returning customers first seen
    in the first 30 days, the rest are acquired uniformly over the period. Every profile
    has a session on the day it is first seen, so each one has at least one event.
Latent engagement
    A daily Markov chain ``active -> lapsing -> dormant`` (with recovery and rare
    reactivation) multiplies the session rate by 1, 0.3 or 0.03. The active -> lapsing hazard
    shrinks with the profile's recent purchases (loyalty), and a purchase makes the profile
    active again. A slowly drifting latent intent (AR(1) around a per-profile mean) raises
    product views and add-to-cart rates.
Sessions
    A session is a burst of page views (``1 + Poisson``), product views (Poisson, more with
    intent), add-to-carts (Binomial over the viewed products) and at most one purchase.
    A purchase needs a non-empty cart (items added now or in the last couple of weeks); its
    probability is ``sigmoid(b0 + b1 log1p(atc_30d) + b2 log1p(pv_30d) + b3 log1p(purch_90d)
    + b4 intent)`` on the profile's own decayed counts (time constants 30 and 90 days).
Goals
    ``conversion`` (a purchase within 30 days) therefore rises with recent add-to-carts,
    product views and page views and falls with the time since the last visit; ``churn`` (no
    purchase within 90 days, for past buyers) rises with the time since the last purchase
    and the last visit and falls with recent purchases and recent activity.

Examples
--------
>>> log = simulate(profiles=20, days=10, seed=1, start_ms=0, prm=BehaviourParams())
>>> len(set(log.profile.tolist()))  # every profile has at least one event
20
>>> bool((log.ts[1:] >= log.ts[:-1]).all()) and int(log.ts[-1]) < 10 * DAY_MS
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ADD_TO_CART",
    "CATEGORIES",
    "DAY_MS",
    "GROUND_TRUTH",
    "N_SKUS",
    "PAGE_NAMES",
    "PAGE_VIEW",
    "PRODUCT_VIEW",
    "PURCHASE",
    "SKUS_PER_CATEGORY",
    "BehaviourParams",
    "EventLog",
    "simulate",
]

PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, PURCHASE = range(4)
"""Event codes of the log (:data:`models.synthetic.EVENT_TYPES` gives their XDM types)."""
DAY_MS = 86_400_000

GROUND_TRUTH: dict[str, dict[str, Any]] = {
    "conversion": {
        "goal": {"type": "occurs", "event": "purchase", "window_days": 30},
        "eligibility": None,
        # Sign of the marginal association with the goal (+1: more of the feature, likelier
        # to reach it). All hold in the generated data; *_days_since_last read as of just
        # before the scored event (gap since the previous visit).
        "drivers": {
            "add_to_cart_count_30d": +1,
            "product_view_count_30d": +1,
            "page_view_count_30d": +1,
            "purchase_count_90d": +1,
            "page_view_days_since_last": -1,
        },
        # Drivers that keep their sign in a multivariate fit on the full feature set
        # (River StandardScaler | LogisticRegression); the others are collinear with them.
        "key_drivers": ["add_to_cart_count_30d", "product_view_count_30d"],
        "mechanism": (
            "per-session purchase probability is a logistic function of log1p of the decayed "
            "add-to-cart (30d), product-view (30d) and purchase (90d) counts and needs a "
            "non-empty cart; future sessions come from a persistent engagement state that "
            "recent visits reveal and long gaps since the last visit betray"
        ),
    },
    "churn": {
        "goal": {"type": "does_not_occur", "event": "purchase", "window_days": 90},
        "eligibility": {"purchase_count_total": {"gte": 1}},
        "drivers": {
            "purchase_days_since_last": +1,
            "page_view_days_since_last": +1,
            "purchase_count_90d": -1,
            "page_view_count_30d": -1,
            "add_to_cart_count_30d": -1,
        },
        "key_drivers": ["purchase_days_since_last", "add_to_cart_count_30d"],
        "mechanism": (
            "recent purchases lower the hazard of leaving the active state and make the next "
            "purchase likelier; lapsing and dormant profiles visit rarely and so stop buying"
        ),
    },
}
"""Planted drivers per goal, in the product's feature names, with their signs."""

CATEGORIES: tuple[str, ...] = (
    "shoes", "jackets", "shirts", "trousers", "dresses", "bags",
    "watches", "sunglasses", "sportswear", "accessories", "home", "beauty",
)  # fmt: skip
SKUS_PER_CATEGORY = 20
N_SKUS = len(CATEGORIES) * SKUS_PER_CATEGORY
PAGE_NAMES: tuple[str, ...] = (
    "home", "search results", "deals", "help", "cart", "account",
    *(f"category: {c}" for c in CATEGORIES),
)  # fmt: skip
_N_FIXED_PAGES = 6
_FIXED_PAGE_WEIGHTS = np.array([0.30, 0.14, 0.09, 0.03, 0.06, 0.03])  # rest: category pages
_HOURLY_WEIGHTS = np.array(
    [0.25, 0.12, 0.08, 0.06, 0.06, 0.12, 0.3, 0.6, 0.85, 0.95, 1.0, 1.1,
     1.2, 1.1, 1.0, 1.0, 1.1, 1.3, 1.5, 1.75, 1.85, 1.6, 1.1, 0.55]
)  # fmt: skip


@dataclass(frozen=True)
class BehaviourParams:
    """Constants of the planted behaviour model (defaults are the documented model)."""

    rate_median: float = 0.06  # sessions per day of an active profile (median over profiles)
    rate_sigma: float = 1.0  # log-normal spread of the base rate
    rate_cap: float = 1.0
    returning_share: float = 0.6  # first seen in the first ``returning_days`` days
    returning_days: int = 30
    state_multiplier: tuple[float, float, float] = (1.0, 0.3, 0.03)  # active/lapsing/dormant
    initial_state: tuple[float, float, float] = (0.6, 0.25, 0.15)
    p_active_to_lapsing: float = 0.015  # per day, times exp(-loyalty * purchases_90d)
    loyalty: float = 0.8
    p_lapsing_to_active: float = 0.03
    p_lapsing_to_dormant: float = 0.04
    p_dormant_to_active: float = 0.004
    intent_mean_sigma: float = 0.5
    intent_sigma: float = 0.5  # stationary spread around the profile's mean intent
    intent_rho: float = 0.97  # daily autocorrelation of intent
    page_views_mean: float = 1.8  # extra page views per session (Poisson)
    product_views_mean: float = 1.0  # product views per session at intent 0 (Poisson)
    product_views_intent: float = 0.8
    atc_logit: float = -1.6  # add-to-cart probability per product view at intent 0
    buy_bias: float = -5.0
    buy_atc: float = 0.9
    buy_pv: float = 0.3
    buy_purchases: float = 0.4
    buy_intent: float = 0.5
    cart_tau_days: float = 14.0  # abandoned carts empty out with this time constant
    deep_link_share: float = 0.35  # sessions that start on a product page
    favourite_share: float = 0.7
    mobile_share: float = 0.6
    device_loyalty: float = 0.85
    gap_mean_ms: float = 40_000.0  # mean time between events in a session
    gap_cap_ms: int = 120_000
    max_sessions_per_day: int = 3
    max_page_views: int = 8
    max_product_views: int = 10


@dataclass
class EventLog:
    """The simulated events, columnar, sorted by (timestamp, profile, emission order).

    About 20 bytes per event; :func:`models.synthetic.iter_events` renders them as XDM.
    """

    ts: np.ndarray  # int64 epoch milliseconds
    profile: np.ndarray  # int32 profile index
    etype: np.ndarray  # int8 event code
    aux: np.ndarray  # int32: page code, SKU index or order index
    device: np.ndarray  # int8: 1 mobile, 0 desktop
    orders: list[tuple[int, ...]]  # SKU indices per purchase


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate(profiles: int, days: int, seed: int, start_ms: int, prm: BehaviourParams) -> EventLog:
    """Simulate ``profiles`` visitors for ``days`` days from ``start_ms`` (epoch ms, UTC).

    Profile ``k`` of the log is ``p-<k + 1>`` of the events; the same arguments always
    give the same log.

    Raises
    ------
    ValueError
        If ``profiles`` or ``days`` is negative.
    """
    if profiles < 0 or days < 0:
        raise ValueError("profiles and days must be >= 0")
    rng = np.random.default_rng([int(seed) % (1 << 64), 0x5E55])
    n = profiles
    rate = np.minimum(rng.lognormal(math.log(prm.rate_median), prm.rate_sigma, n), prm.rate_cap)
    intent_mean = rng.normal(0.0, prm.intent_mean_sigma, n)
    intent = intent_mean + rng.normal(0.0, prm.intent_sigma, n)
    state = rng.choice(3, size=n, p=np.asarray(prm.initial_state)).astype(np.int8)
    mobile = rng.random(n) < prm.mobile_share
    fav_cat = rng.integers(0, len(CATEGORIES), n)
    returning = rng.random(n) < prm.returning_share
    born = np.where(
        returning,
        rng.integers(0, max(1, min(days, prm.returning_days)), n),
        rng.integers(0, max(1, days), n),
    )
    atc_d = np.zeros(n)
    pv_d = np.zeros(n)
    pur_d = np.zeros(n)
    cart = np.zeros(n)
    last_sku = np.full(n, -1, dtype=np.int64)

    mult = np.asarray(prm.state_multiplier)
    d30, d90, dcart = math.exp(-1 / 30), math.exp(-1 / 90), math.exp(-1 / prm.cart_tau_days)
    innov = prm.intent_sigma * math.sqrt(1.0 - prm.intent_rho**2)
    hour_cdf = np.concatenate([[0.0], np.cumsum(_HOURLY_WEIGHTS) / _HOURLY_WEIGHTS.sum()])
    hour_x = np.arange(25) * 3_600_000.0 * (23.0 / 24.0)  # sessions start before 23:00
    page_p = np.concatenate(
        [
            _FIXED_PAGE_WEIGHTS,
            np.full(len(CATEGORIES), (1 - _FIXED_PAGE_WEIGHTS.sum()) / len(CATEGORIES)),
        ]
    )
    page_p = page_p / page_p.sum()

    chunks: list[tuple[np.ndarray, ...]] = []
    orders: list[tuple[int, ...]] = []

    for d in range(days):
        atc_d *= d30
        pv_d *= d30
        pur_d *= d90
        cart *= dcart
        intent = (
            intent_mean + prm.intent_rho * (intent - intent_mean) + innov * rng.standard_normal(n)
        )
        u = rng.random(n)
        lapse = prm.p_active_to_lapsing * np.exp(-prm.loyalty * pur_d)
        new_state = state.copy()
        new_state[(state == 0) & (u < lapse)] = 1
        lap = state == 1
        new_state[lap & (u < prm.p_lapsing_to_active)] = 0
        new_state[
            lap
            & (u >= prm.p_lapsing_to_active)
            & (u < prm.p_lapsing_to_active + prm.p_lapsing_to_dormant)
        ] = 2
        new_state[(state == 2) & (u < prm.p_dormant_to_active)] = 0
        state = new_state

        lam = np.where(born <= d, rate * mult[state], 0.0)
        n_sess = np.minimum(rng.poisson(lam), prm.max_sessions_per_day)
        first_day = born == d
        n_sess[first_day] = np.maximum(n_sess[first_day], 1)
        day_ms = start_ms + d * DAY_MS

        for k in range(prm.max_sessions_per_day):
            idx = np.flatnonzero(n_sess > k)
            s = idx.size
            if s == 0:
                break
            ns = n_sess[idx]
            q = (k + 0.9 * rng.random(s)) / ns
            sess_start = day_ms + np.interp(q, hour_cdf, hour_x).astype(np.int64)
            it = intent[idx]
            n_page = np.minimum(1 + rng.poisson(prm.page_views_mean, s), prm.max_page_views)
            n_prod = np.minimum(
                rng.poisson(prm.product_views_mean * np.exp(prm.product_views_intent * it)),
                prm.max_product_views,
            )
            n_atc = rng.binomial(n_prod, _sigmoid(prm.atc_logit + it))
            pv_d[idx] += n_prod
            atc_d[idx] += n_atc
            cart[idx] += n_atc
            logit = (
                prm.buy_bias
                + prm.buy_atc * np.log1p(atc_d[idx])
                + prm.buy_pv * np.log1p(pv_d[idx])
                + prm.buy_purchases * np.log1p(pur_d[idx])
                + prm.buy_intent * it
            )
            buy = (cart[idx] >= 0.5) & (rng.random(s) < _sigmoid(logit))
            deep = (n_prod > 0) & (rng.random(s) < prm.deep_link_share)
            dev = np.where(rng.random(s) < prm.device_loyalty, mobile[idx], ~mobile[idx])

            # product views and their SKUs; the first n_atc views of a session are added
            n_pv_tot = int(n_prod.sum())
            pv_owner = np.repeat(np.arange(s), n_prod)
            pv_first = np.concatenate([[0], np.cumsum(n_prod)[:-1]])
            pv_rank = np.arange(n_pv_tot) - pv_first[pv_owner]
            cat = np.where(
                rng.random(n_pv_tot) < prm.favourite_share,
                fav_cat[idx][pv_owner],
                rng.integers(0, len(CATEGORIES), n_pv_tot),
            )
            pv_sku = cat * SKUS_PER_CATEGORY + rng.integers(0, SKUS_PER_CATEGORY, n_pv_tot)
            pv_key = rng.random(n_pv_tot)
            pv_key[(pv_rank == 0) & deep[pv_owner]] = -1.0
            is_atc = pv_rank < n_atc[pv_owner]

            # purchases: the SKUs added in this session, else the item left in the cart
            buy_sess = np.flatnonzero(buy)
            order_ids = np.arange(len(orders), len(orders) + buy_sess.size, dtype=np.int64)
            for j in buy_sess.tolist():
                a = int(n_atc[j])
                if a:
                    st = int(pv_first[j])
                    orders.append(tuple(pv_sku[st : st + a].tolist()))
                else:
                    orders.append((int(last_sku[idx[j]]),))
            added = np.flatnonzero(n_atc > 0)
            last_sku[idx[added]] = pv_sku[pv_first[added] + n_atc[added] - 1]
            bought = idx[buy_sess]
            pur_d[bought] += 1.0
            cart[bought] = 0.0
            state[bought] = 0

            # page views
            n_pg_tot = int(n_page.sum())
            pg_owner = np.repeat(np.arange(s), n_page)
            pg_first = np.concatenate([[0], np.cumsum(n_page)[:-1]])
            pg_key = rng.random(n_pg_tot)
            pg_key[pg_first] = -0.5
            pg_code = rng.choice(len(PAGE_NAMES), size=n_pg_tot, p=page_p)
            fav_page = (pg_code >= _N_FIXED_PAGES) & (rng.random(n_pg_tot) < 0.5)
            pg_code[fav_page] = _N_FIXED_PAGES + fav_cat[idx][pg_owner[fav_page]]

            atc_pos = np.flatnonzero(is_atc)
            owner = np.concatenate([pg_owner, pv_owner, pv_owner[atc_pos], buy_sess])
            key = np.concatenate(
                [pg_key, pv_key, pv_key[atc_pos] + 1e-9, np.full(buy_sess.size, 2.0)]
            )
            etype = np.concatenate(
                [
                    np.full(n_pg_tot, PAGE_VIEW, np.int8),
                    np.full(n_pv_tot, PRODUCT_VIEW, np.int8),
                    np.full(atc_pos.size, ADD_TO_CART, np.int8),
                    np.full(buy_sess.size, PURCHASE, np.int8),
                ]
            )
            aux = np.concatenate([pg_code, pv_sku, pv_sku[atc_pos], order_ids]).astype(np.int32)
            order = np.lexsort((key, owner))
            owner, etype, aux = owner[order], etype[order], aux[order]
            m = owner.size
            gap = np.minimum(
                1 + rng.exponential(prm.gap_mean_ms, m).astype(np.int64), prm.gap_cap_ms
            )
            new_sess = np.ones(m, dtype=bool)
            new_sess[1:] = owner[1:] != owner[:-1]
            gap[new_sess] = 0
            cs = np.cumsum(gap)
            offset = cs - cs[np.flatnonzero(new_sess)][np.cumsum(new_sess) - 1]
            chunks.append(
                (
                    sess_start[owner] + offset,
                    idx[owner].astype(np.int32),
                    etype,
                    aux,
                    dev[owner].astype(np.int8),
                )
            )

    if not chunks:
        e = np.zeros(0, np.int64)
        return EventLog(
            e, e.astype(np.int32), e.astype(np.int8), e.astype(np.int32), e.astype(np.int8), []
        )
    ts = np.concatenate([c[0] for c in chunks])
    prof = np.concatenate([c[1] for c in chunks])
    order = np.lexsort((np.arange(ts.size), prof, ts))  # ties: profile, then emission order
    log = EventLog(
        ts=ts[order],
        profile=prof[order],
        etype=np.concatenate([c[2] for c in chunks])[order],
        aux=np.concatenate([c[3] for c in chunks])[order],
        device=np.concatenate([c[4] for c in chunks])[order],
        orders=orders,
    )
    return log
