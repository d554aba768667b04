"""Turn an invoice export (UCI "Online Retail" shape) into an edgewise bundle.

Input: a CSV with the columns InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice,
CustomerID, Country (e.g. ../shared/data/online-retail/OnlineRetail.csv). `retail_bundle` writes a
bundle with the synthetic bundles' placements (home, pdp_similar, hero_banner with the experiment
hero_test) and returns a `RetailImport`: counts, each customer's training history and, with
`split_date`, the held-out purchases that `edgewise.offline.evaluation` scores against.

Cleaning:

- Lines whose StockCode is a service code (postage, carriage, manual lines, discounts, fees, samples:
  `SERVICE_CODES`) are not products and are skipped. Stock codes are upper-cased (the export spells
  some codes both ways).
- Lines with a unit price <= 0 are skipped (free replacements, write-offs, adjustments).
- An invoice whose number starts with "C" is a cancellation: its quantity counts as negative (a line
  with a negative quantity on another invoice is a return, treated the same way). Quantities are
  summed per (customer, product) and period, so a cancellation nets out the purchase it cancels; a
  pair whose net quantity is <= 0 is no purchase. Periods are kept apart: a cancellation on or after
  `split_date` never changes the training data.
- Lines without a CustomerID belong to no profile. They count toward item popularity (each anonymous
  invoice as one shopper) and put a product in the catalog.

Mapping:

- customers -> profiles `c<CustomerID>`. The export holds no personal data: customer ids are
  pseudonymous numbers. Attributes (each declared in schema.json with its purpose): `country` (ISO
  3166-1 alpha-2 when the export's country name is known), RFM as `recency_days`, `orders` (F) and
  `ltv` (M, net spend), `rfm_score` (quintile scores, e.g. "545"), `rfm_segment` (champions, loyal,
  new, potential, at_risk, hibernating), `value_segment` (high, medium, low by ltv), `products`,
  `cancelled_lines`, `first_purchase`, `last_purchase`, `recent_purchases` (the last 20 items) and
  `top_categories`. The export says nothing about consent: this importer grants every profile the
  `personalization` purpose as of its first purchase. That is an assumption, not a fact of the data.
- products -> items `p<StockCode>` (characters outside [A-Za-z0-9_.:-] become "_"). There is no
  category column: `category_for` assigns a coarse category by keyword rules over the description
  (`CATEGORY_RULES`, first match wins, "other" when none matches: 18% of the products of the
  sample). Price: the median unit price of the product's purchase lines. Regions ["*"]. Tags:
  the description's words in lower case (at most 8). `launch_date`: the day of its first sale.

Models, NumPy only (SciPy is not a runtime dependency):

- `item_popularity`: distinct shoppers per item in the training period: customers whose net
  quantity is > 0, plus one per anonymous invoice that bought it.
- Embeddings (`hybrid_embeddings`, in `edgewise.core.hybrid_embeddings`, which the control plane's
  embeddings refresh with method `hybrid` runs on events and the items' tags): the customer x product
  matrix (purchases weighted by age) is smoothed through an item x item similarity, half co-purchase
  cosine, half cosine of the descriptions' idf-weighted words (`description_terms`), and the smoothed
  matrix is factorized by a truncated SVD
  (randomized, in NumPy, seeded by `seed`: 0.3 s where a full `eigh` of the 3k x 3k Gram matrix takes
  11 s on a 2-core machine). `dim - 1` coordinates hold the factors, the last one a popularity prior,
  so `user . item` is the rank-limited item-kNN score plus a weighted prior. Why this and not a plain
  factorization of the purchase matrix: the export is a 30k-line sample, about eight lines per
  customer. On validation folds inside the training period a truncated SVD of the raw matrix (PureSVD
  on binary, log-count or idf-weighted entries, 16 to 128 dims) did no better than popularity
  (0.4-1.4x its NDCG@10 per fold, 0.8-1.0x on average), while the description words, which tie the
  products of one line (SPACEBOY, RETROSPOT, WOODLAND ...) together, lift the smoothed model to
  about 1.5x (BENCHMARKS.md). An implicit ALS would face the same sparsity and was not tried.
- Co-purchase neighbors: per item the top `NEIGHBORS` items by co-purchase cosine (shrunk by
  `ModelParams.neighbor_shrink`), written to `models/item_neighbors.npy` and
  `models/item_neighbor_scores.npy`.

With `split_date`, every model, profile and the catalog come from the invoices before the date; the
purchases on or after it by customers with a profile are returned as `RetailImport.test`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from edgewise.core.hybrid_embeddings import (
    HybridParams,
    copurchase_similarity,
    hybrid_embeddings,
    item_similarity,
    term_similarity,
    top_right_singular_vectors,
)
from edgewise.sync.bundle_write import write_bundle

__all__ = [
    "CATEGORY_RULES",
    "COUNTRY_CODES",
    "NEIGHBORS",
    "REQUIRED_COLUMNS",
    "SERVICE_CODES",
    "InvoiceLine",
    "ModelParams",
    "Purchases",
    "RetailError",
    "RetailImport",
    "category_for",
    "collect_purchases",
    "copurchase_neighbors",
    "copurchase_similarity",
    "description_similarity",
    "description_terms",
    "hybrid_embeddings",
    "item_id_for",
    "profile_id_for",
    "read_invoice_lines",
    "retail_bundle",
    "retail_rules",
    "retail_schema",
    "tags_for",
    "top_right_singular_vectors",
]

REQUIRED_COLUMNS: Final = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
# Stock codes that are not products: postage, carriage, manual lines, discounts, fees, samples.
SERVICE_CODES: Final = frozenset(
    {"POST", "DOT", "C2", "M", "D", "S", "B", "CRUK", "PADS", "AMAZONFEE", "BANK CHARGES", "ADJUST"}
)
NEIGHBORS: Final = 20
RECENT_PURCHASES: Final = 20
MAX_TAGS: Final = 8

COUNTRY_CODES: Final[dict[str, str]] = {
    "Australia": "AU",
    "Austria": "AT",
    "Bahrain": "BH",
    "Belgium": "BE",
    "Brazil": "BR",
    "Canada": "CA",
    "Cyprus": "CY",
    "Czech Republic": "CZ",
    "Denmark": "DK",
    "EIRE": "IE",
    "Finland": "FI",
    "France": "FR",
    "Germany": "DE",
    "Greece": "GR",
    "Hong Kong": "HK",
    "Iceland": "IS",
    "Israel": "IL",
    "Italy": "IT",
    "Japan": "JP",
    "Lebanon": "LB",
    "Lithuania": "LT",
    "Malta": "MT",
    "Netherlands": "NL",
    "Norway": "NO",
    "Poland": "PL",
    "Portugal": "PT",
    "RSA": "ZA",
    "Saudi Arabia": "SA",
    "Singapore": "SG",
    "Spain": "ES",
    "Sweden": "SE",
    "Switzerland": "CH",
    "USA": "US",
    "United Arab Emirates": "AE",
    "United Kingdom": "GB",
}

# (category path, keywords): the first rule with a keyword among the description's words wins.
CATEGORY_RULES: Final[tuple[tuple[str, frozenset[str]], ...]] = tuple(
    (path, frozenset(words.split()))
    for path, words in (
        ("seasonal/christmas", "CHRISTMAS XMAS ADVENT SNOWFLAKE REINDEER SANTA NATIVITY"),
        ("seasonal/easter", "EASTER CHICK CHICKS EGG EGGS"),
        ("party", "PARTY BIRTHDAY BUNTING BALLOON BALLOONS NAPKINS CANDY CONFETTI"),
        ("lighting", "CANDLE CANDLES T-LIGHT TEALIGHT LANTERN LIGHT LIGHTS LAMP NIGHTLIGHT INCENSE"),
        ("jewellery", "NECKLACE BRACELET EARRINGS RING CHARM DIAMANTE BEAD BEADED BROOCH HAIR CLIP"),
        ("bags", "BAG BAGS PURSE WALLET SHOPPER TOTE BACKPACK RUCKSACK"),
        (
            "stationery",
            "CARD CARDS WRAP PAPER NOTEBOOK PEN PENS PENCIL PENCILS STICKERS STICKER "
            "TAPE JOURNAL SKETCHBOOK ENVELOPES CALENDAR BOOK ERASER RUBBER TAGS TAG",
        ),
        (
            "toys",
            "TOY TOYS GAME GAMES PUZZLE JIGSAW DOLL DOLLY SPACEBOY SOLDIER KIT CRAYONS "
            "PLAYHOUSE SKIPPING BALL",
        ),
        (
            "kitchen",
            "MUG MUGS CUP CUPS SAUCER PLATE PLATES BOWL BOWLS TEA COFFEE CAKE BAKING JAR "
            "LUNCH CUTLERY SPOON SPOONS BOTTLE BEAKER TEAPOT KITCHEN PANTRY JAM APRON TRAY DISH "
            "COASTER COASTERS GLASS TUMBLER CASES RECIPE TOWEL MOULD",
        ),
        ("garden", "GARDEN PLANT PLANTER WATERING FLOWERPOT BIRDHOUSE FEEDER PARASOL"),
        (
            "home/storage",
            "BOX BOXES BASKET STORAGE DRAWER TIN TINS HOOK HOOKS KNOB CABINET RACK HANGER CONTAINER CRATE",
        ),
        (
            "home/decor",
            "SIGN FRAME CLOCK CUSHION DOORSTOP MIRROR ORNAMENT DECORATION "
            "DECORATIONS GARLAND WREATH DOORMAT VASE HEART HEARTS WALL HANGING COVER THROW "
            "MAGNETS MAGNET PLAQUE",
        ),
    )
)
_STOPWORD_TEXT: Final = (
    "OF AND IN WITH ON THE FOR A TO S W T I D CM SET PACK ASSORTED SMALL LARGE MEDIUM MINI JUMBO DESIGN"
)
_TAG_STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())
_ID_BAD_CHARS: Final = re.compile(r"[^A-Za-z0-9_.:-]")
_WORD: Final = re.compile(r"[A-Z][A-Z'-]*[A-Z]|[A-Z]")
_DATE_FORMATS: Final = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")  # the UCI original: 12/1/2010 8:26

Progress = Callable[[str], None]
FloatArray = NDArray[np.float64]


class RetailError(ValueError):
    """An invoice export that cannot be read: names the column, line and value where there is one."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of the export, parsed. `customer` is "" for an anonymous shopper."""

    line_no: int  # 1-based line number in the file (the header is line 1)
    invoice: str
    stock_code: str  # upper-cased
    description: str
    quantity: int  # negative for a cancellation or return
    when: datetime
    unit_price: float
    customer: str
    country: str


@dataclass(slots=True)
class Purchases:
    """Net purchases of one period, per (customer, product)."""

    net_quantity: dict[tuple[str, str], int] = field(default_factory=dict)
    last_bought: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def positive(self) -> dict[tuple[str, str], int]:
        """The pairs whose net quantity is > 0 (a net of <= 0 is no purchase)."""
        return {pair: q for pair, q in self.net_quantity.items() if q > 0}


@dataclass(frozen=True, slots=True)
class RetailImport:
    """What `retail_bundle` wrote and what an offline evaluation needs to score it."""

    out: Path
    version: int
    split_date: date | None
    lines_read: int
    lines_skipped_service: int  # postage, fees, manual lines ...
    lines_skipped_price: int  # unit price <= 0
    lines_anonymous: int  # no CustomerID (count toward popularity only)
    cancellation_lines: int  # in the training period
    pairs_netted_out: int  # (customer, product) pairs of the training period with net quantity <= 0
    profiles: int
    items: int
    item_ids: tuple[str, ...]  # row order of items.jsonl and the model arrays
    profile_ids: tuple[str, ...]  # row order of profiles.jsonl and user_embeddings.npy
    # profile id -> item ids bought in the training period, oldest last purchase first
    history: Mapping[str, tuple[str, ...]]
    # profile id -> catalog item ids bought (net) on/after split_date; empty without a split
    test: Mapping[str, tuple[str, ...]]
    test_lines: int  # product lines on/after split_date (all customers, before netting)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts (for the CLI)."""
        return {
            "out": str(self.out),
            "version": self.version,
            "split_date": self.split_date.isoformat() if self.split_date else None,
            "lines_read": self.lines_read,
            "lines_skipped_service": self.lines_skipped_service,
            "lines_skipped_price": self.lines_skipped_price,
            "lines_anonymous": self.lines_anonymous,
            "cancellation_lines": self.cancellation_lines,
            "pairs_netted_out": self.pairs_netted_out,
            "profiles": self.profiles,
            "items": self.items,
            "test_customers": len(self.test),
            "test_purchases": sum(len(v) for v in self.test.values()),
        }


# --------------------------------------------------------------------------------------------------
# reading the export


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM); exports saved by spreadsheet tools are often Latin-1."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _parse_date(text: str, line_no: int, cache: dict[str, datetime]) -> datetime:
    cached = cache.get(text)
    if cached is not None:
        return cached
    value = text.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
    if parsed is None:
        raise RetailError(
            f"line {line_no}: column InvoiceDate: cannot parse {text!r} as a date "
            "(expected YYYY-MM-DD HH:MM[:SS] or M/D/YYYY H:MM)"
        )
    parsed = parsed.replace(tzinfo=None)
    cache[text] = parsed
    return parsed


def _parse_quantity(text: str, line_no: int) -> int:
    value = text.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise RetailError(f"line {line_no}: column Quantity: must be a whole number, got {text!r}")
    return int(number)


def _parse_price(text: str, line_no: int) -> float:
    try:
        number = float(text.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise RetailError(f"line {line_no}: column UnitPrice: must be a finite number, got {text!r}")
    return number


def _parse_customer(text: str) -> str:
    """'12923.0' -> '12923' (exports read through a spreadsheet turn ids into floats); '' stays ''."""
    value = text.strip()
    if value.endswith(".0") and value[:-2].isdigit():
        return value[:-2]
    return value


def read_invoice_lines(csv_path: str | Path) -> list[InvoiceLine]:
    """Parse the export; raise RetailError naming missing columns, or the line and column of a bad value."""
    path = Path(csv_path)
    try:
        text = _decode(path.read_bytes())
    except OSError as exc:
        raise RetailError(f"cannot read {path}: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise RetailError(f"{path}: empty file (expected a header with {', '.join(REQUIRED_COLUMNS)})")
    names = [name.strip() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise RetailError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(the header has: {', '.join(names) or 'nothing'})"
        )
    col = {name: names.index(name) for name in REQUIRED_COLUMNS}
    width = max(col.values()) + 1
    dates: dict[str, datetime] = {}
    lines: list[InvoiceLine] = []
    for row in reader:
        line_no = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise RetailError(f"line {line_no}: {len(row)} field(s), the header has {len(names)}")
        invoice = row[col["InvoiceNo"]].strip()
        code = row[col["StockCode"]].strip().upper()
        if not invoice:
            raise RetailError(f"line {line_no}: column InvoiceNo: empty")
        if not code:
            raise RetailError(f"line {line_no}: column StockCode: empty")
        quantity = _parse_quantity(row[col["Quantity"]], line_no)
        cancelled = invoice.upper().startswith("C")
        lines.append(
            InvoiceLine(
                line_no=line_no,
                invoice=invoice,
                stock_code=code,
                description=" ".join(row[col["Description"]].split()),
                quantity=-abs(quantity) if cancelled else quantity,
                when=_parse_date(row[col["InvoiceDate"]], line_no, dates),
                unit_price=_parse_price(row[col["UnitPrice"]], line_no),
                customer=_parse_customer(row[col["CustomerID"]]),
                country=row[col["Country"]].strip(),
            )
        )
    if not lines:
        raise RetailError(f"{path}: no invoice lines after the header")
    return lines


# --------------------------------------------------------------------------------------------------
# ids, categories, tags


def _sanitize(raw: str) -> str:
    return _ID_BAD_CHARS.sub("_", raw)[:127]


def item_id_for(stock_code: str) -> str:
    """Catalog id of a stock code: 'p' + the code with characters outside [A-Za-z0-9_.:-] as '_'."""
    return "p" + _sanitize(stock_code.upper())


def profile_id_for(customer: str) -> str:
    """Profile id of a customer id: 'c' + the id with characters outside [A-Za-z0-9_.:-] as '_'."""
    return "c" + _sanitize(customer)


def _unique_ids(raws: Sequence[str], make: Callable[[str], str]) -> list[str]:
    """`make(raw)` for each raw id; two raw ids that sanitize alike get suffixes '.2', '.3', ..."""
    ids: list[str] = []
    taken: set[str] = set()
    for raw in raws:
        base = make(raw)
        unique, n = base, 1
        while unique in taken:
            n += 1
            unique = f"{base[:120]}.{n}"
        taken.add(unique)
        ids.append(unique)
    return ids


def _words(description: str) -> list[str]:
    return _WORD.findall(description.upper())


def category_for(description: str) -> str:
    """Coarse category path from a product description (first matching keyword rule, else 'other')."""
    words = set(_words(description))
    for path, keywords in CATEGORY_RULES:
        if words & keywords:
            return path
    return "other"


def tags_for(description: str) -> list[str]:
    """An item's tags as the bundle stores them: the description's words in lower case, three letters or
    more, no stopword, at most 8 (the control plane's hybrid refresh reads them as the item's words)."""
    return _tags(description)


def _tags(description: str) -> list[str]:
    tags: list[str] = []
    for word in _words(description):
        tag = _ID_BAD_CHARS.sub("", word.lower())
        if len(tag) >= 3 and word not in _TAG_STOPWORDS and tag not in tags:
            tags.append(tag)
    return tags[:MAX_TAGS]


# --------------------------------------------------------------------------------------------------
# netting purchases


def collect_purchases(lines: Iterable[InvoiceLine]) -> Purchases:
    """Sum quantities per (customer, stock code): cancellations net out purchases (known customers)."""
    out = Purchases()
    for line in lines:
        if not line.customer:
            continue
        pair = (line.customer, line.stock_code)
        out.net_quantity[pair] = out.net_quantity.get(pair, 0) + line.quantity
        if line.quantity > 0:
            last = out.last_bought.get(pair)
            if last is None or line.when > last:
                out.last_bought[pair] = line.when
    return out


# --------------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True, slots=True)
class ModelParams:
    """Knobs of the embedding model; the defaults were chosen on validation folds inside the training
    period (`edgewise eval offline --validation`, see BENCHMARKS.md), never on the test period."""

    copurchase_weight: float = 0.5  # share of co-purchase cosine in the item similarity (rest: words)
    copurchase_shrink: float = 10.0  # cosine co(i, j) / (sqrt(n_i n_j) + shrink)
    neighbor_shrink: float = 100.0  # the same cosine for the neighbor lists (more shrink: fewer rare items)
    history_half_life_days: float = 90.0  # weight of a past purchase: 0.5 ** (age / half-life)
    popularity_weight: float = 1.0  # weight of the popularity prior in user . item
    similar_scale: float = 0.35  # RMS norm of the item factor rows (sets the pdp_similar balance)

    def __post_init__(self) -> None:
        checks = {
            "neighbor_shrink": self.neighbor_shrink >= 0.0,
            "history_half_life_days": self.history_half_life_days > 0.0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ValueError(f"model parameter {name}: out of range, got {value!r}")
        self.hybrid()  # checks the embedding model's knobs

    def hybrid(self) -> HybridParams:
        """The embedding model's knobs (`core.hybrid_embeddings`, shared with the control plane's refresh)."""
        return HybridParams(
            copurchase_weight=self.copurchase_weight,
            copurchase_shrink=self.copurchase_shrink,
            popularity_weight=self.popularity_weight,
            similar_scale=self.similar_scale,
        )


def description_terms(description: str) -> list[str]:
    """The words of a description that count in the item similarity: upper case, two letters or more,
    no stopword (the bundle's tags are the lower-case ones of three letters or more, at most 8)."""
    return [word for word in _words(description) if len(word) >= 2 and word not in _TAG_STOPWORDS]


def description_similarity(descriptions: Sequence[str]) -> FloatArray:
    """Item x item cosine of the descriptions' words, idf-weighted (product lines such as SPACEBOY,
    RETROSPOT or WOODLAND share rare words): `core.hybrid_embeddings.term_similarity` of
    `description_terms`. The diagonal is 0."""
    return term_similarity([description_terms(description) for description in descriptions])


def copurchase_neighbors(
    similarity: FloatArray, k: int = NEIGHBORS
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Top-`k` neighbors per item of an item x item similarity (0 diagonal), best first.

    Items with a similarity <= 0 are never neighbors; rows are padded with -1 and score 0. Ties
    break by the lower row index (deterministic).
    """
    n_items = similarity.shape[0]
    k = max(0, min(k, n_items - 1))
    neighbors = np.full((n_items, k), -1, dtype=np.int32)
    scores = np.zeros((n_items, k), dtype=np.float32)
    if k == 0:
        return neighbors, scores
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(similarity, order, axis=1)
    keep = top > 0
    neighbors[keep] = order[keep]
    scores[keep] = top[keep]
    return neighbors, scores


# --------------------------------------------------------------------------------------------------
# schema and rules


def retail_schema() -> dict[str, Any]:
    """schema.json of retail bundles: every profile attribute with its purpose."""
    p, a = "personalization", "analytics"

    def f(kind: str, purpose: str, description: str) -> dict[str, Any]:
        return {"type": kind, "purpose": purpose, "description": description}

    return {
        "profile_fields": {
            "country": f("string", p, "ISO 3166-1 alpha-2 code of the invoices' country, when known"),
            "recency_days": f("integer", a, "days from the last purchase to the reference date (RFM R)"),
            "orders": f("integer", a, "distinct purchase invoices (RFM F)"),
            "ltv": f("number", a, "net spend: purchases minus cancellations (RFM M)"),
            "rfm_score": f("string", a, "quintile scores R, F, M (1-5 each), e.g. '545'"),
            "rfm_segment": f(
                "string", p, "champions, loyal, new, potential, at_risk or hibernating (from rfm_score)"
            ),
            "value_segment": f("string", p, "high (top 20% ltv), medium (next 40%) or low"),
            "products": f("integer", a, "distinct products bought (net of cancellations)"),
            "cancelled_lines": f("integer", a, "cancellation lines of the customer"),
            "first_purchase": f("string", a, "date of the first purchase (YYYY-MM-DD)"),
            "last_purchase": f("string", a, "date of the last purchase (YYYY-MM-DD)"),
            "recent_purchases": f("string[]", p, "item ids of the last 20 products bought, newest first"),
            "top_categories": f("string[]", p, "the customer's most bought categories (up to 3)"),
        }
    }


def retail_rules() -> dict[str, Any]:
    """rules.json of retail bundles (see docs/rules.md): value-based and needs-like segments from RFM
    and purchase history, the synthetic bundles' placements with retail content."""
    return {
        "segments": {
            "champions": {"condition": {"profile.rfm_segment": {"$in": ["champions", "loyal"]}}},
            "high_value": {"condition": {"profile.value_segment": "high"}},
            "christmas_shoppers": {"condition": {"profile.top_categories": {"$in": ["seasonal/christmas"]}}},
            "uk": {"condition": {"context.country": "GB"}},
        },
        "experiments": {
            "hero_test": {
                "salt": "hero_test",
                "variants": [
                    {"id": "control", "weight": 1, "content_id": "hero_default"},
                    {"id": "gift_ideas", "weight": 1, "content_id": "hero_gift_ideas"},
                ],
            }
        },
        "placements": {
            "home": {
                "kind": "items",
                "default_count": 10,
                "max_count": 50,
                "default": {"strategy": "popular", "scope": "global"},
                "campaigns": [{"id": "personal", "serve": {"strategy": "personalized"}}],
            },
            "pdp_similar": {
                "kind": "items",
                "default_count": 8,
                "max_count": 50,
                # Embedding neighbors: on this data they beat the co-purchase lists (BENCHMARKS.md).
                "campaigns": [{"id": "similar", "serve": {"strategy": "similar", "method": "embedding"}}],
            },
            "bought_together": {
                "kind": "items",
                "default_count": 8,
                "max_count": 50,
                "campaigns": [
                    {"id": "co_purchase", "serve": {"strategy": "similar", "method": "cooccurrence"}}
                ],
            },
            "hero_banner": {
                "kind": "content",
                "default_content": "hero_default",
                "campaigns": [
                    {
                        "id": "vip_thanks",
                        "priority": 10,
                        "audience": ["champions", "high_value"],
                        "serve": {"content": "hero_vip"},
                    },
                    {
                        "id": "christmas",
                        "priority": 5,
                        "audience": ["christmas_shoppers"],
                        "schedule": {"start": "2011-11-01T00:00:00Z", "end": "2011-12-26T00:00:00Z"},
                        "serve": {"content": "hero_christmas"},
                    },
                    {"id": "hero_ab", "serve": {"experiment": "hero_test"}},
                ],
            },
        },
        "contents": {
            "hero_default": {"title": "New in: home and gifts", "link": "/new"},
            "hero_gift_ideas": {"title": "Gift ideas for every occasion", "link": "/gifts"},
            "hero_vip": {"title": "Thank you: early access for our best customers", "link": "/vip"},
            "hero_christmas": {"title": "Christmas decorations are back", "link": "/christmas"},
        },
        "cold_start_min_views": 1,
    }


# --------------------------------------------------------------------------------------------------
# the import


def _quintile_scores(values: FloatArray, *, higher_is_better: bool) -> NDArray[np.int64]:
    """1..5 by each value's average rank (ties share a score)."""
    n = values.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keyed = values if higher_is_better else -values
    order = np.argsort(keyed, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    _, inverse = np.unique(keyed, return_inverse=True)
    mean_rank = np.bincount(inverse, weights=ranks) / np.bincount(inverse)
    share = (mean_rank[inverse] + 0.5) / n
    scores: NDArray[np.int64] = np.clip(np.ceil(share * 5), 1, 5).astype(np.int64)
    return scores


def _rfm_segment(r: int, f: int, m: int) -> str:
    fm = (f + m) / 2
    if r >= 4 and fm >= 4:
        return "champions"
    if r >= 4 and f <= 2:
        return "new"
    if r >= 3 and fm >= 3:
        return "loyal"
    if r <= 2 and fm >= 3:
        return "at_risk"
    if r <= 2:
        return "hibernating"
    return "potential"


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _parse_day(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RetailError(f"{what} must be a date YYYY-MM-DD, got {value!r}") from None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


@dataclass(slots=True)
class _Catalog:
    """The items of the training period, in row order (sorted by stock code)."""

    codes: list[str]
    ids: list[str]
    row: dict[str, int]
    records: list[dict[str, Any]]
    descriptions: list[str]
    categories: list[str]
    popularity: NDArray[np.float32]


def _build_catalog(train: Sequence[InvoiceLine], bought: Iterable[tuple[str, str]]) -> _Catalog:
    """Items: every product with a purchase line. Popularity: customers whose net quantity of it is
    > 0 (`bought` pairs), plus one shopper per anonymous invoice that bought it."""
    descriptions: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    first_sold: dict[str, datetime] = {}
    shoppers: dict[str, set[str]] = defaultdict(set)
    for line in train:
        if line.quantity <= 0:
            continue
        code = line.stock_code
        if line.description:
            descriptions[code][line.description] += 1
        prices[code].append(line.unit_price)
        if code not in first_sold or line.when < first_sold[code]:
            first_sold[code] = line.when
        if not line.customer:
            shoppers[code].add(f"anonymous invoice {line.invoice}")
    for customer, code in bought:
        shoppers[code].add(f"customer {customer}")
    codes = sorted(prices)
    ids = _unique_ids(codes, item_id_for)
    texts = [descriptions[code].most_common(1)[0][0] if descriptions[code] else "" for code in codes]
    categories = [category_for(text) for text in texts]
    records = [
        {
            "id": item_id,
            "category": category,
            "tags": _tags(text),
            "price": round(float(np.median(prices[code])), 4),
            "regions": ["*"],
            "launch_date": first_sold[code].date().isoformat(),
        }
        for code, item_id, text, category in zip(codes, ids, texts, categories, strict=True)
    ]
    return _Catalog(
        codes=codes,
        ids=ids,
        row={code: i for i, code in enumerate(codes)},
        records=records,
        descriptions=texts,
        categories=categories,
        popularity=np.array([len(shoppers[code]) for code in codes], dtype=np.float32),
    )


@dataclass(slots=True)
class _Customers:
    """The profiles of the training period, in row order, with what the models need."""

    ids: list[str]  # customer ids, in profile row order
    profile_of: dict[str, str]  # customer id -> profile id
    records: list[dict[str, Any]]
    history: dict[str, tuple[str, ...]]  # profile id -> item ids, oldest last purchase first
    weights: FloatArray  # [customers, items]: 0.5 ** (age / half-life) where bought, else 0


def _build_customers(
    train: Sequence[InvoiceLine],
    purchases: Purchases,
    catalog: _Catalog,
    ref_day: date,
    half_life_days: float,
) -> _Customers:
    bought = purchases.positive()
    customers = sorted({customer for customer, _ in bought}, key=lambda c: (len(c), c))
    user_row = {customer: j for j, customer in enumerate(customers)}
    profile_of = dict(zip(customers, _unique_ids(customers, profile_id_for), strict=True))
    invoices: dict[str, set[str]] = defaultdict(set)
    spend: dict[str, float] = defaultdict(float)
    cancelled: Counter[str] = Counter()
    first_seen: dict[str, datetime] = {}
    last_seen: dict[str, datetime] = {}
    countries: dict[str, Counter[str]] = defaultdict(Counter)
    for line in train:
        c = line.customer
        if c not in user_row:
            continue
        spend[c] += line.quantity * line.unit_price
        countries[c][line.country] += 1
        if line.quantity < 0:
            cancelled[c] += 1
            continue
        invoices[c].add(line.invoice)
        if c not in first_seen or line.when < first_seen[c]:
            first_seen[c] = line.when
        if c not in last_seen or line.when > last_seen[c]:
            last_seen[c] = line.when
    recency = np.array([(ref_day - last_seen[c].date()).days for c in customers], dtype=np.float64)
    orders = np.array([len(invoices[c]) for c in customers], dtype=np.float64)
    ltv = np.array([spend[c] for c in customers], dtype=np.float64)
    r_score = _quintile_scores(recency, higher_is_better=False)
    f_score = _quintile_scores(orders, higher_is_better=True)
    m_score = _quintile_scores(ltv, higher_is_better=True)
    high_cut = float(np.quantile(ltv, 0.8)) if customers else 0.0
    low_cut = float(np.quantile(ltv, 0.4)) if customers else 0.0

    owned: dict[str, list[str]] = defaultdict(list)
    for customer, code in bought:
        owned[customer].append(code)
    weights = np.zeros((len(customers), len(catalog.codes)))
    records: list[dict[str, Any]] = []
    history: dict[str, tuple[str, ...]] = {}
    for j, c in enumerate(customers):
        pid = profile_of[c]
        codes = sorted(owned[c], key=lambda code: (purchases.last_bought[(c, code)], code))
        for code in codes:
            age = (ref_day - purchases.last_bought[(c, code)].date()).days
            weights[j, catalog.row[code]] = 0.5 ** (max(age, 0) / half_life_days)
        item_ids = [catalog.ids[catalog.row[code]] for code in codes]
        history[pid] = tuple(item_ids)
        categories = Counter(catalog.categories[catalog.row[code]] for code in codes)
        country = countries[c].most_common(1)[0][0]
        value = "high" if ltv[j] > high_cut else ("medium" if ltv[j] > low_cut else "low")
        attributes: dict[str, Any] = {}
        if country in COUNTRY_CODES:
            attributes["country"] = COUNTRY_CODES[country]
        attributes.update(
            {
                "recency_days": int(recency[j]),
                "orders": int(orders[j]),
                "ltv": round(float(ltv[j]), 2),
                "rfm_score": f"{r_score[j]}{f_score[j]}{m_score[j]}",
                "rfm_segment": _rfm_segment(int(r_score[j]), int(f_score[j]), int(m_score[j])),
                "value_segment": value,
                "products": len(codes),
                "cancelled_lines": int(cancelled[c]),
                "first_purchase": first_seen[c].date().isoformat(),
                "last_purchase": last_seen[c].date().isoformat(),
                "recent_purchases": item_ids[::-1][:RECENT_PURCHASES],
                "top_categories": [
                    name for name, _ in sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
                ],
            }
        )
        granted = min(_day_ms(first_seen[c].date()), _day_ms(ref_day))
        records.append({"id": pid, "attributes": attributes, "consent": {"personalization": granted}})
    return _Customers(ids=customers, profile_of=profile_of, records=records, history=history, weights=weights)


def retail_bundle(
    csv_path: str | Path,
    out_dir: str | Path,
    *,
    version: int = 1,
    dim: int = 32,
    seed: int = 0,
    split_date: str | None = None,
    until: str | None = None,
    params: ModelParams | None = None,
    progress: Progress | None = None,
) -> RetailImport:
    """Import the invoice export at `csv_path` as a bundle in `out_dir` (see the module docstring).

    `split_date` (YYYY-MM-DD): build everything from the lines before it and return the purchases on
    or after it as `RetailImport.test`. `until` (YYYY-MM-DD): ignore the lines on or after it, as if
    the export ended there (offline validation inside a training period uses it). `params`: the
    model's knobs (default `ModelParams()`). `seed` seeds the randomized SVD; the same export, seed
    and arguments give the same bundle (apart from the manifest's created_at). Raises
    RetailError for an unreadable export or an empty training period, BundleError if the result does
    not validate.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    params = params or ModelParams()
    split = _parse_day(split_date, "split date")
    end = _parse_day(until, "until")
    if split is not None and end is not None and end <= split:
        raise RetailError(f"until ({end}) must be after the split date ({split})")

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    say(f"reading {csv_path}")
    lines = read_invoice_lines(csv_path)
    if end is not None:
        lines = [line for line in lines if line.when < _midnight(end)]
    service = sum(1 for line in lines if line.stock_code in SERVICE_CODES)
    products = [line for line in lines if line.stock_code not in SERVICE_CODES]
    bad_price = sum(1 for line in products if line.unit_price <= 0)
    products = [line for line in products if line.unit_price > 0]
    if split is not None:
        train = [line for line in products if line.when < _midnight(split)]
        later = [line for line in products if line.when >= _midnight(split)]
    else:
        train, later = products, []
    if not any(line.customer and line.quantity > 0 for line in train):
        raise RetailError(
            "no purchase by a known customer in the training period"
            + (f" (before {split})" if split is not None else "")
        )
    say(f"{len(lines)} lines: {len(train)} product lines for training, {len(later)} held out")

    ref_day = split if split is not None else max(line.when for line in train).date()
    purchases = collect_purchases(train)
    bought = purchases.positive()
    catalog = _build_catalog(train, bought)
    say(f"catalog: {len(catalog.ids)} items in {len(set(catalog.categories))} categories")
    customers = _build_customers(train, purchases, catalog, ref_day, params.history_half_life_days)
    say(f"profiles: {len(customers.ids)} customers")

    say(f"embeddings: {len(customers.ids)} x {len(catalog.ids)}, dim {dim}")
    purchased = customers.weights > 0
    terms = [description_terms(description) for description in catalog.descriptions]
    similarity = item_similarity(purchased, terms, params.hybrid())
    users, items = hybrid_embeddings(
        customers.weights, similarity, catalog.popularity, dim, params.hybrid(), seed=seed
    )
    del similarity
    copurchase = copurchase_similarity(purchased, params.neighbor_shrink)
    neighbors, neighbor_scores = copurchase_neighbors(copurchase, NEIGHBORS)

    test: dict[str, tuple[str, ...]] = {}
    if split is not None:
        per_customer: dict[str, list[str]] = defaultdict(list)
        for customer, code in sorted(collect_purchases(later).positive()):
            if customer in customers.profile_of and code in catalog.row:
                per_customer[customers.profile_of[customer]].append(catalog.ids[catalog.row[code]])
        test = {pid: tuple(ids) for pid, ids in sorted(per_customer.items())}

    generator = f"edgewise bundle from-retail {Path(csv_path).name} --dim {dim} --seed {seed}"
    if split is not None:
        generator += f" --split-date {split.isoformat()}"
    say("writing the bundle")
    out = write_bundle(
        out_dir,
        version=version,
        schema=retail_schema(),
        items=catalog.records,
        profiles=customers.records,
        rules=retail_rules(),
        item_embeddings=items.astype(np.float32),
        item_popularity=catalog.popularity,
        user_embeddings=users.astype(np.float32),
        item_neighbors=neighbors if neighbors.shape[1] > 0 else None,
        item_neighbor_scores=neighbor_scores if neighbors.shape[1] > 0 else None,
        generator=generator,
    )
    return RetailImport(
        out=out,
        version=version,
        split_date=split,
        lines_read=len(lines),
        lines_skipped_service=service,
        lines_skipped_price=bad_price,
        lines_anonymous=sum(1 for line in products if not line.customer),
        cancellation_lines=sum(1 for line in train if line.quantity < 0),
        pairs_netted_out=len(purchases.net_quantity) - len(bought),
        profiles=len(customers.records),
        items=len(catalog.records),
        item_ids=tuple(catalog.ids),
        profile_ids=tuple(record["id"] for record in customers.records),
        history=customers.history,
        test=test,
        test_lines=len(later),
    )
