"""A synthetic, seeded PII corpus in English and Chinese for measuring de-identification:
sentences with known entity spans (valid Chinese IDs, Luhn-valid cards, emails, phones, IPs,
URLs), and clean sentences full of numbers that must not be flagged. Shared by the tests and
``benchmarks/privacy.py``; nothing here is real personal data.
"""
from __future__ import annotations

import numpy as np

from polyfuse.privacy.pii import cn_id_check_digit, luhn_ok

_EN = ["Please contact {} if anything changes.", "My details: {}, call or write any time.",
       "The customer gave {} at checkout.", "Send the invoice to {} before Friday.", "Logged from {} at 10:42."]
_ZH = ["请通过{}联系我，谢谢。", "客户留下的信息是{}，请核对。", "我的资料：{}。", "如有问题请联系{}", "登记信息{}已提交"]
_NAMES = ["alice", "bob.smith", "li.wei", "zhang_san", "j.doe", "maria-garcia", "wang.fang88", "kim"]
_DOMAINS = ["example.com", "mail.example.org", "qq.com", "163.com", "company.co.uk", "uni.edu.cn"]
_REGIONS = ["110101", "310104", "440305", "510107", "330106", "420102"]


def cn_id(rng: np.random.Generator) -> str:
    """A resident ID with a correct GB 11643-1999 check character."""
    birth = f"{rng.integers(1950, 2006)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    first17 = f"{rng.choice(_REGIONS)}{birth}{rng.integers(0, 1000):03d}"
    return first17 + cn_id_check_digit(first17)


def bank_card(rng: np.random.Generator) -> str:
    """A Luhn-valid card number (Visa/Mastercard/UnionPay-like prefixes), sometimes grouped by 4."""
    prefix, length = [("4", 16), ("51", 16), ("62", 16), ("62", 19), ("4", 13)][int(rng.integers(5))]
    body = prefix + "".join(str(d) for d in rng.integers(0, 10, length - len(prefix) - 1))
    number = next(body + str(d) for d in range(10) if luhn_ok(body + str(d)))
    if length == 16 and rng.random() < 0.5:
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))
    return number


def phone(rng: np.random.Generator) -> str:
    d = lambda n: "".join(str(x) for x in rng.integers(0, 10, n))  # noqa: E731
    forms = [f"1{rng.integers(3, 10)}{d(9)}", f"+86 1{rng.integers(3, 10)}{d(1)} {d(4)} {d(4)}",
             f"({rng.integers(200, 999)}) {d(3)}-{d(4)}", f"{rng.integers(200, 999)}-{d(3)}-{d(4)}",
             f"+44 20 {d(4)} {d(4)}", f"+1 {rng.integers(200, 999)}-{d(3)}-{d(4)}", f"010-{d(8)}",
             f"+49 30 {d(8)}"]
    return forms[int(rng.integers(len(forms)))]


def email(rng: np.random.Generator) -> str:
    return f"{rng.choice(_NAMES)}{rng.integers(0, 100)}@{rng.choice(_DOMAINS)}"


def ip(rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        return f"2001:db8:{rng.integers(0, 65536):x}::{rng.integers(1, 65536):x}"
    return ".".join(str(x) for x in [rng.integers(1, 224), *rng.integers(0, 256, 3)])


def url(rng: np.random.Generator) -> str:
    path = rng.choice(["", "/orders/123", "/a/b?id=42&x=y", "/profile"])
    return f"{rng.choice(['https://', 'http://', 'www.'])}{rng.choice(_DOMAINS)}{path}"


GENERATORS = {"email": email, "phone": phone, "cn_id": cn_id, "bank_card": bank_card, "ip": ip, "url": url}


def pii_corpus(per_type: int = 60, seed: int = 0) -> list[tuple[str, str, str]]:
    """``per_type`` sentences per entity type, half English and half Chinese: (text, type, value)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, make in GENERATORS.items():
        for i in range(per_type):
            value = make(rng)
            templates = _EN if i % 2 == 0 else _ZH
            rows.append((templates[int(rng.integers(len(templates)))].format(value), kind, value))
    return rows


def clean_corpus(n: int = 300, seed: int = 1) -> list[str]:
    """Sentences with dates, prices, years, times, quantities and order numbers and no PII."""
    rng = np.random.default_rng(seed)
    d = lambda k: "".join(str(x) for x in rng.integers(0, 10, k))  # noqa: E731
    makers = [
        lambda: f"The meeting moved to {rng.integers(2000, 2031)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} at {rng.integers(0, 24)}:{rng.integers(0, 60):02d}.",
        lambda: f"It costs ${rng.integers(1, 5000):,}.{rng.integers(0, 100):02d} plus {rng.integers(1, 30)}% tax.",
        lambda: f"Order #{d(8)} shipped on {rng.integers(1, 13)}/{rng.integers(1, 29)}/{rng.integers(2000, 2031)}.",
        lambda: f"We sold {rng.integers(1, 100000):,} units in {rng.integers(1990, 2031)}, up {rng.integers(1, 99)}.{rng.integers(0, 9)} percent.",
        lambda: f"订单号{d(10)}已于{rng.integers(2000, 2031)}年{rng.integers(1, 13)}月{rng.integers(1, 29)}日发货。",
        lambda: f"价格是{rng.integers(10, 99999)}元，库存{rng.integers(0, 500)}件。",
        lambda: f"Version {rng.integers(0, 10)}.{rng.integers(0, 20)}.{rng.integers(0, 50)} fixes {rng.integers(1, 40)} bugs.",
        lambda: f"Room {rng.integers(100, 999)}, floor {rng.integers(1, 40)}, score {rng.integers(0, 100)}:{rng.integers(0, 100)}.",
        lambda: f"Temperature {rng.integers(-20, 40)}.{rng.integers(0, 9)} C, humidity {rng.integers(10, 99)}%, wind {rng.integers(0, 60)} km/h.",
        # long reference numbers: the checksums keep most of them from passing as IDs or cards
        lambda: f"Tracking {d(18)}, parcel ref {d(15)}, {rng.integers(1, 9)} items.",
        lambda: f"第{rng.integers(1, 200)}届大会共有{rng.integers(100, 99999)}人参加，时长{rng.integers(1, 12)}小时。",
    ]
    return [makers[int(rng.integers(len(makers)))]() for _ in range(n)]
