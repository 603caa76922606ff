"""River's scaler + AdaGrad logistic regression, computed on float lists (compiled).

:class:`ScaledLogistic` is the learning core of :class:`models.learner.OnlineLearner`:
River 0.26.1's ``preprocessing.StandardScaler`` -> clip at ``±CLIP_SD`` ->
``linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr), l2=l2,
intercept_lr=lr)``, one example at a time. River is the definition: every update here
is River's, written out on lists indexed like the feature names instead of River's
dicts, with the same floating-point operations in the same order, so the results are
bit for bit River's (``tests/models/test_learner.py`` feeds random streams to both and
compares). ``setup.py`` compiles this module with mypyc; the Python source is the same
code.

What River computes, per example ``x`` (already ``log1p``-transformed):

- scaler (``StandardScaler.learn_one``): per feature ``count += 1``,
  ``mean += (x - old_mean) / count``,
  ``var += ((x - old_mean) * (x - mean) - var) / count``;
- standardising (``transform_one``): ``(x - mean) / var ** 0.5``, 0 where ``var`` is 0,
  then clipped to ``[-CLIP_SD, CLIP_SD]`` (this project's clip, not River's);
- logistic regression (``GLM.learn_one``): ``raw = sum(w * x) + intercept``; the log
  loss gradient (``optim.losses.Log.gradient``, with its ±18 clamping) ``g``, clipped to
  ``±clip_gradient``; ``intercept -= lr * g``; per feature ``grad = x * g + l2 * w``
  (the L2 term only when ``l2`` is not 0), then AdaGrad (``optim.AdaGrad``):
  ``g2 += grad ** 2`` and ``w -= lr / (g2 + eps) ** 0.5 * grad``; ``n_iterations += 1``.

Examples
--------
>>> core = ScaledLogistic(2, learning_rate=0.1, l2=0.0)
>>> _ = core.learn([1.0, 0.0], 1)
>>> core.learn([0.0, 0.0], 0)  # what the classifier learnt from: x scaled, clipped
[-1.0, 0.0]
>>> core.counts, core.means, core.vars
([2, 2], [0.5, 0.0], [0.25, 0.0])
>>> core.n_iterations, core.weights[1]
(2, 0.0)
"""

from __future__ import annotations

import math

from models.model import CLIP_SD

__all__ = ["ADAGRAD_EPS", "CLIP_GRADIENT", "ScaledLogistic", "platt_step"]

#: ``optim.AdaGrad``'s default ``eps``
ADAGRAD_EPS = 1e-8
#: ``linear_model.LogisticRegression``'s default ``clip_gradient``
CLIP_GRADIENT = 1e12


class ScaledLogistic:
    """The scaler and logistic regression of one learner, on lists (see the module docstring).

    Parameters
    ----------
    n
        Number of features; every list below has this length, in feature order.
    learning_rate
        AdaGrad step size of the weights and (constant) learning rate of the intercept.
    l2
        L2 penalty of the weights.

    Attributes
    ----------
    counts, means, vars
        The scaler's per-feature count, running mean and running variance.
    weights, g2
        The weights and AdaGrad's sums of squared gradients.
    intercept
        The intercept.
    n_iterations
        The optimizer's step count (River's ``optimizer.n_iterations``).
    """

    def __init__(self, n: int, learning_rate: float, l2: float) -> None:
        self.n = n
        self.learning_rate = learning_rate
        self.l2 = l2
        self.counts: list[int] = [0] * n
        self.means: list[float] = [0.0] * n
        self.vars: list[float] = [0.0] * n
        self.weights: list[float] = [0.0] * n
        self.g2: list[float] = [0.0] * n
        self.intercept = 0.0
        self.n_iterations = 0

    def scaled(self, x: list[float]) -> list[float]:
        """``x`` standardised by the scaler (River's ``transform_one``), clipped to ±CLIP_SD."""
        k = CLIP_SD
        means = self.means
        vars_ = self.vars
        out = [0.0] * self.n
        for i in range(self.n):
            v = vars_[i]
            if v:
                # math.pow is the C pow() that River's ``v ** 0.5`` calls: the same bits
                s = (x[i] - means[i]) / math.pow(v, 0.5)
                out[i] = -k if s < -k else k if s > k else s
        return out

    def dot(self, scaled: list[float]) -> float:
        """``sum(w * x)`` in feature order (River's ``VectorDict.dot``), without the intercept."""
        weights = self.weights
        total = 0.0
        for i in range(self.n):
            total += weights[i] * scaled[i]
        return total

    def logit(self, scaled: list[float]) -> float:
        """The model's logit of standardised, clipped inputs: ``intercept + sum(w * x)``."""
        return self.intercept + self.dot(scaled)

    def _learn_classifier(self, scaled: list[float], raw: float, label: int) -> None:
        """One ``LogisticRegression.learn_one`` (log loss, AdaGrad weights, SGD intercept)
        from ``raw = intercept + sum(w * scaled)``."""
        loss_gradient = _log_loss_gradient(label, raw)
        # River multiplies by the sample weight (1.0), then clips to ±clip_gradient with
        # max(min(g, clip), -clip): spelt out as the builtins compare (NaN passes)
        loss_gradient = loss_gradient * 1.0
        if CLIP_GRADIENT < loss_gradient:
            loss_gradient = CLIP_GRADIENT
        if -CLIP_GRADIENT > loss_gradient:
            loss_gradient = -CLIP_GRADIENT
        lr = self.learning_rate
        self.intercept = self.intercept - lr * loss_gradient
        weights = self.weights
        g2 = self.g2
        l2 = self.l2
        penalised = l2 != 0.0
        for i in range(self.n):
            grad = scaled[i] * loss_gradient
            if penalised:
                grad = grad + l2 * weights[i]
            # River's ``grad ** 2`` and ``(g2 + eps) ** 0.5`` are C pow() calls: math.pow
            total = g2[i] + math.pow(grad, 2.0)
            g2[i] = total
            weights[i] = weights[i] - lr / math.pow(total + ADAGRAD_EPS, 0.5) * grad
        self.n_iterations += 1

    def learn(self, x: list[float], label: int) -> list[float]:
        """Learn one example: the scaler, then the classifier on ``x`` scaled by it.

        One pass over the features updates the scaler (``StandardScaler.learn_one``),
        scales and clips ``x`` with it and sums ``w * x``; a second updates the weights.

        Parameters
        ----------
        x
            The ``log1p``-transformed features.
        label
            1 or 0.

        Returns
        -------
        list of float
            ``x`` standardised by the updated scaler and clipped (what the classifier
            learnt from).
        """
        n = self.n
        k = CLIP_SD
        counts = self.counts
        means = self.means
        vars_ = self.vars
        weights = self.weights
        scaled = [0.0] * n
        dot = 0.0
        for i in range(n):
            xi = x[i]
            count = counts[i] + 1
            counts[i] = count
            old_mean = means[i]
            mean = old_mean + (xi - old_mean) / count
            means[i] = mean
            var = vars_[i] + ((xi - old_mean) * (xi - mean) - vars_[i]) / count
            vars_[i] = var
            s = 0.0
            if var:
                s = (xi - mean) / math.pow(var, 0.5)
                s = -k if s < -k else k if s > k else s
                scaled[i] = s
            dot += weights[i] * s
        self._learn_classifier(scaled, dot + self.intercept, label)
        return scaled


def _log_loss_gradient(label: int, raw: float) -> float:
    """``optim.losses.Log().gradient(y_true=bool(label), y_pred=raw)``, weights 1."""
    y = 1.0 if label else -1.0
    z = raw * y
    if z > 18.0:
        return math.exp(-z) * -y
    if z < -18.0:
        return -y
    return -y / (math.exp(z) + 1.0)


def platt_step(
    a: float,
    b: float,
    moments: tuple[list[float], list[float]],
    t: int,
    rate: float,
    grads: tuple[float, float],
    min_slope: float,
) -> tuple[float, float]:
    """One Adam step (step ``t``, size ``rate``) of a Platt layer's ``(a, b)`` down
    ``grads``; ``a`` is then kept at or above ``min_slope``. Updates the first and second
    ``moments`` in place and returns the new ``(a, b)``: the step of
    :meth:`models.learner.OnlineLearner.learn`, compiled.

    >>> m, v = [0.0, 0.0], [0.0, 0.0]
    >>> a, b = platt_step(1.0, 0.0, (m, v), 1, 0.02, (0.5, -0.25), 0.05)
    >>> round(a, 6), round(b, 6)
    (0.98, 0.02)
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m, v = moments
    steps: list[float] = []
    for k in range(2):
        g = grads[k]
        m[k] = beta1 * m[k] + (1 - beta1) * g
        v[k] = beta2 * v[k] + (1 - beta2) * g * g
        m_hat = m[k] / (1 - math.pow(beta1, t))
        v_hat = v[k] / (1 - math.pow(beta2, t))
        steps.append(rate * m_hat / (math.sqrt(v_hat) + eps))
    return max(a - steps[0], min_slope), b - steps[1]
