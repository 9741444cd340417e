"""A card-fraud scorer for the tabular demo, trained on synthetic transactions.

**Why synthetic.** scikit-learn ships no transaction data set, and the fraud data sets
people know (the Kaggle/ULB credit-card set, IEEE-CIS, PaySim) are not in any package
registry; the few PyPI packages that claim to simulate card fraud are small, unreviewed
one-author projects. Mapping a bundled scikit-learn data set (breast cancer, covertype, ...)
to transaction-like field names would give a model whose "fraud score" means nothing. So
the data comes from a generator shipped here, :func:`generate`: deterministic (seeded
numpy), its fraud rule written down below, with noise, so that what the model learns and
how well it can learn it are both known. The scores mean "how much this transaction looks
like the rule's fraud", nothing about real-world fraud.

**The transactions.** 200 merchants in 8 categories, each with a risk score in [0, 1] (the
kind a payment processor assigns: the category's base risk plus noise); 5,000 customers
aged 18-89. A transaction has an ``amount`` (log-normal, by category), an ``hour`` of the
day (mostly daytime), its ``merchant`` and ``customer``, and ``distance_km`` from the
customer's home (mostly a few km, one in ten far away).

**The fraud rule** (:func:`fraud_logit`): the log-odds of fraud are ::

    -7.0 + 1.1·ln(1 + amount/50) + 1.8·[hour < 6] + 3.5·merchant.risk
         + 1.2·ln(1 + distance_km/50) + 0.9·[customer.age < 25 or ≥ 75]

and each transaction is fraud with that probability (a Bernoulli draw: the noise), about
3% of them. The model never sees the rule; it sees ``FEATURES`` and the drawn labels.

**The model**: a scikit-learn ``HistGradientBoostingClassifier`` on the five ``FEATURES``
(one float64 input ``inputs`` [N, 5] for streamserve's scikit-learn runtime, whose
``predict_proba`` signature gives ``probabilities`` [N, 2]), trained on 20,000 transactions
and checked on 5,000 others; ``training.json`` records its ROC AUC next to the rule's own
(the best any model can reach on these labels). ``model.joblib`` is what
``streamserve serve``/``stream --model-base-path`` load. Building takes a few seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.joblib"
TRAINING_FILE = "training.json"
FEATURES = ("amount", "hour", "merchant.risk", "customer.age", "distance_km")
"""The model's input columns, in order: dotted paths into a transaction record."""
TRAIN_SEED = 20230
TEST_SEED = 20231
TRAIN_ROWS = 20_000
TEST_ROWS = 5_000

# category: (base risk, median amount, amount log-sd, share of transactions)
CATEGORIES: dict[str, tuple[float, float, float, float]] = {
    "grocery": (0.05, 35.0, 0.6, 0.30),
    "restaurants": (0.10, 28.0, 0.5, 0.20),
    "fuel": (0.15, 45.0, 0.4, 0.12),
    "pharmacy": (0.10, 22.0, 0.7, 0.08),
    "clothing": (0.25, 70.0, 0.7, 0.12),
    "travel": (0.40, 320.0, 0.8, 0.06),
    "electronics": (0.60, 240.0, 0.9, 0.08),
    "gift_cards": (0.85, 100.0, 0.6, 0.04),
}
MERCHANTS = 200
CUSTOMERS = 5_000
# the catalogue of merchants and customers is fixed; only the transactions vary by seed
CATALOGUE_SEED = 7


TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Transaction",
    "namespace": "streamserve.demo",
    "doc": "A card payment (synthetic: streamserve.models.transactions)",
    "fields": [
        {"name": "txn_id", "type": "string"},
        {"name": "timestamp_ms", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "currency", "type": "string"},
        {"name": "hour", "type": "int"},
        {
            "name": "merchant",
            "type": {
                "type": "record",
                "name": "Merchant",
                "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "category", "type": "string"},
                    {"name": "risk", "type": "double"},
                ],
            },
        },
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [
                    {"name": "id", "type": "string"},
                    {"name": "age", "type": "int"},
                ],
            },
        },
        {"name": "distance_km", "type": "double"},
    ],
}
"""The Avro schema of :meth:`Transactions.record`'s events."""


@dataclass(frozen=True)
class Catalogue:
    """The merchants (id, category, risk) and customers (id, age) transactions draw from."""

    merchant_category: np.ndarray  # [MERCHANTS] index into CATEGORIES
    merchant_risk: np.ndarray  # [MERCHANTS] float64 in [0, 1]
    customer_age: np.ndarray  # [CUSTOMERS] int64, 18-89

    @classmethod
    def build(cls) -> Catalogue:
        rng = np.random.default_rng(CATALOGUE_SEED)
        shares = np.array([c[3] for c in CATEGORIES.values()])
        category = rng.choice(len(CATEGORIES), size=MERCHANTS, p=shares / shares.sum())
        base = np.array([c[0] for c in CATEGORIES.values()])[category]
        risk = np.clip(base + rng.normal(0.0, 0.08, MERCHANTS), 0.0, 1.0).round(3)
        age = np.clip(rng.normal(45.0, 16.0, CUSTOMERS), 18, 89).astype(np.int64)
        return cls(category, risk, age)


@dataclass(frozen=True)
class Transactions:
    """``count`` generated transactions, as columns."""

    merchant: np.ndarray  # int64 merchant index
    customer: np.ndarray  # int64 customer index
    amount: np.ndarray  # float64, 2 decimals
    hour: np.ndarray  # int64 0-23
    distance_km: np.ndarray  # float64, 1 decimal
    fraud: np.ndarray  # bool: the rule's Bernoulli draw
    catalogue: Catalogue

    def __len__(self) -> int:
        return len(self.amount)

    def category(self, row: int) -> str:
        return list(CATEGORIES)[int(self.catalogue.merchant_category[self.merchant[row]])]

    def features(self) -> np.ndarray:
        """The model's input: ``[count, len(FEATURES)]`` float64, columns as ``FEATURES``."""
        return np.column_stack(
            [
                self.amount,
                self.hour.astype(np.float64),
                self.catalogue.merchant_risk[self.merchant],
                self.catalogue.customer_age[self.customer].astype(np.float64),
                self.distance_km,
            ]
        )

    def record(self, row: int, txn_id: str, timestamp_ms: int) -> dict[str, Any]:
        """Transaction ``row`` as an event (an Avro record of :data:`TRANSACTION_SCHEMA`)."""
        merchant, customer = int(self.merchant[row]), int(self.customer[row])
        return {
            "txn_id": txn_id,
            "timestamp_ms": timestamp_ms,
            "amount": float(self.amount[row]),
            "currency": "EUR",
            "hour": int(self.hour[row]),
            "merchant": {
                "id": f"m-{merchant:04d}",
                "category": self.category(row),
                "risk": float(self.catalogue.merchant_risk[merchant]),
            },
            "customer": {
                "id": f"c-{customer:05d}",
                "age": int(self.catalogue.customer_age[customer]),
            },
            "distance_km": float(self.distance_km[row]),
        }


def fraud_logit(features: np.ndarray) -> np.ndarray:
    """The documented rule (module docstring): log-odds of fraud per row of ``FEATURES``."""
    amount, hour, risk, age, distance = features.T
    logit: np.ndarray = (
        -7.0
        + 1.1 * np.log1p(amount / 50.0)
        + 1.8 * (hour < 6)
        + 3.5 * risk
        + 1.2 * np.log1p(distance / 50.0)
        + 0.9 * ((age < 25) | (age >= 75))
    )
    return logit


def fraud_probability(features: np.ndarray) -> np.ndarray:
    probability: np.ndarray = 1.0 / (1.0 + np.exp(-fraud_logit(features)))
    return probability


def generate(count: int, seed: int, catalogue: Catalogue | None = None) -> Transactions:
    """``count`` transactions, the same for the same ``seed``."""
    catalogue = catalogue or Catalogue.build()
    rng = np.random.default_rng(seed)
    merchant = rng.integers(0, MERCHANTS, count)
    customer = rng.integers(0, CUSTOMERS, count)
    category = catalogue.merchant_category[merchant]
    medians = np.array([c[1] for c in CATEGORIES.values()])[category]
    spreads = np.array([c[2] for c in CATEGORIES.values()])[category]
    amount = np.maximum(0.5, medians * np.exp(rng.normal(0.0, spreads))).round(2)
    # hours: a daytime bump, and a thin night
    hour = np.clip(rng.normal(14.0, 4.5, count), 0, 23.99).astype(np.int64)
    night = rng.random(count) < 0.06
    hour[night] = rng.integers(0, 6, int(night.sum()))
    far = rng.random(count) < 0.10
    distance = np.where(far, rng.exponential(400.0, count), rng.exponential(6.0, count))
    distance = distance.round(1)
    partial = Transactions(merchant, customer, amount, hour, distance, np.zeros(0, bool), catalogue)
    fraud = rng.random(count) < fraud_probability(partial.features())
    return Transactions(merchant, customer, amount, hour, distance, fraud, catalogue)


def train(rows: int = TRAIN_ROWS, seed: int = TRAIN_SEED) -> Any:
    """The fitted classifier (deterministic: no early-stopping split, fixed seed)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    data = generate(rows, seed)
    model = HistGradientBoostingClassifier(
        max_iter=120, learning_rate=0.1, max_leaf_nodes=15, early_stopping=False, random_state=0
    )
    return model.fit(data.features(), data.fraud)


def build_transactions_servable(version_dir: Path) -> Path:
    """Train the model and write ``model.joblib`` and ``training.json`` into ``version_dir``."""
    import joblib
    from sklearn.metrics import roc_auc_score

    model = train()
    test = generate(TEST_ROWS, TEST_SEED)
    features = test.features()
    scores = model.predict_proba(features)[:, 1]
    summary = {
        "data": "synthetic transactions (streamserve.models.transactions.generate)",
        "features": list(FEATURES),
        "train": {"rows": TRAIN_ROWS, "seed": TRAIN_SEED},
        "test": {"rows": TEST_ROWS, "seed": TEST_SEED, "fraud_rate": float(test.fraud.mean())},
        "model": type(model).__name__,
        "roc_auc": round(float(roc_auc_score(test.fraud, scores)), 4),
        "rule_roc_auc": round(float(roc_auc_score(test.fraud, fraud_probability(features))), 4),
    }
    version_dir.mkdir(parents=True, exist_ok=True)
    partial = version_dir / f".{MODEL_FILE}.partial"
    joblib.dump(model, partial)
    (version_dir / TRAINING_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    partial.replace(version_dir / MODEL_FILE)  # last: a present model file means a whole build
    return version_dir
