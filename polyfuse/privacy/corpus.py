"""A synthetic, seeded PII corpus in English and Chinese for measuring de-identification:
sentences with known entity spans (valid Chinese IDs, Luhn-valid cards, emails, phones, IPs,
URLs, person names, postal addresses), and clean sentences full of numbers, capitalised words and
place names that must not be flagged. Names and addresses have templates of their own, a quarter of
the names with no cue at all and many given names outside the rules' list, so recall is not flattered. Shared by the tests and
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


_GIVEN_EN = ["John", "Maria", "Oliver", "Amelia", "Siobhan", "Tariq", "Chidi", "Ngozi", "Priya", "Lucas", "Hannah",
             "Mateo", "Aisha", "Kenji", "Freya", "Dmitri", "Sofia", "Liam", "Zara", "Mohammed"]
_SURNAMES_EN = ["Smith", "Lopez", "O'Brien", "Okafor", "Nguyen", "Patel", "Johansson", "Kowalski", "Rossi",
                "Fernandez", "McAllister", "Tanaka", "Schmidt", "Haddad", "Brown", "Dubois"]
_TITLES = ["Dr.", "Mr.", "Mrs.", "Ms.", "Prof."]
_PERSON_EN = ["My name is {}.", "Please contact {} about the claim.", "Dear {}, your order has shipped.",
              "Patient {} was admitted on Monday.", "Signed: {}", "The form was filled in by {} yesterday.",
              "{} called twice this morning."]  # the last two carry no cue
_SURNAMES_ZH = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "欧阳", "诸葛"]
_GIVEN_ZH = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "建华"]
_PERSON_ZH = ["我叫{}，今年三十岁。", "患者{}今日复诊。", "联系人：{}", "收件人{}，请当面签收。", "请把材料交给{}。",
              "{}昨天打过电话。"]  # the last two carry no cue
_TITLES_ZH = ["先生", "女士", "医生", "经理", "老师"]
_UNCUED = ("The form was filled in by", "called twice this morning", "请把材料交给", "昨天打过电话")


def cued(text: str) -> bool:
    """False for the corpus' person sentences that say nowhere that a name is a name."""
    return not any(u in text for u in _UNCUED)


def person(rng: np.random.Generator) -> tuple[str, str]:
    """(sentence, name): English or Chinese, with a title, a cue or (a quarter of them) neither."""
    if rng.random() < 0.5:
        name = f"{rng.choice(_GIVEN_EN)} {rng.choice(_SURNAMES_EN)}"
        if rng.random() < 0.25:
            return f"{rng.choice(_TITLES)} {name} will see you at noon.", name
        return str(rng.choice(_PERSON_EN)).format(name), name
    name = f"{rng.choice(_SURNAMES_ZH)}{rng.choice(_GIVEN_ZH)}"
    if rng.random() < 0.25:
        return f"请{name}{rng.choice(_TITLES_ZH)}到三号窗口。", name
    return str(rng.choice(_PERSON_ZH)).format(name), name


_STREETS_EN = ["Baker", "Oak", "Maple", "Victoria", "Church", "High", "Elm", "Sunset", "Park", "King"]
_SUFFIXES = ["Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Boulevard", "Close"]
_CITIES = [("Springfield, IL", "62704"), ("Austin, TX", "78701"), ("Portland, OR", "97205")]
_ADDRESS_EN = ["I live at {}.", "Ship to {} please.", "Address: {}", "The office moved to {} last year."]
_PROVINCES = ["广东省", "浙江省", "四川省", ""]
_CITIES_ZH = ["广州市", "杭州市", "成都市", "北京市", "上海市"]
_DISTRICTS = ["天河区", "西湖区", "武侯区", "朝阳区", "浦东新区", "余杭区"]
_ROADS = ["中山路", "人民大道", "解放街", "建国路", "南京东路", "文三路"]
_ESTATES = ["幸福小区", "阳光花园", "锦绣家园", "金色公寓"]
_ADDRESS_ZH = ["我家住在{}。", "收货地址：{}", "请寄到{}，谢谢。", "公司位于{}", "地址{}"]


def address(rng: np.random.Generator) -> tuple[str, str]:
    """(sentence, address): a US/UK street address, or a Chinese road-and-number or estate-and-room one."""
    if rng.random() < 0.5:
        street = f"{rng.integers(1, 9999)} {rng.choice(_STREETS_EN)} {rng.choice(_SUFFIXES)}"
        tail = rng.random()
        if tail < 0.3:
            city, zip_ = _CITIES[int(rng.integers(len(_CITIES)))]
            street += f", Apt {rng.integers(1, 40)}, {city} {zip_}" if rng.random() < 0.5 else f", {city} {zip_}"
        elif tail < 0.45:
            street += f", London SW{rng.integers(1, 20)} {rng.integers(1, 10)}AB"
        return str(rng.choice(_ADDRESS_EN)).format(street), street
    admin = f"{rng.choice(_PROVINCES)}{rng.choice(_CITIES_ZH)}{rng.choice(_DISTRICTS)}"
    if rng.random() < 0.6:
        place = f"{rng.choice(_ROADS)}{rng.integers(1, 999)}号"
        if rng.random() < 0.5:
            place += f"{rng.integers(1, 30)}栋{rng.integers(101, 2999)}室"
    else:
        place = f"{rng.choice(_ESTATES)}{rng.integers(1, 30)}栋{rng.integers(1, 6)}单元{rng.integers(101, 2999)}室"
    value = (admin if rng.random() < 0.7 else "") + place
    return str(rng.choice(_ADDRESS_ZH)).format(value), value


GENERATORS = {"email": email, "phone": phone, "cn_id": cn_id, "bank_card": bank_card, "ip": ip, "url": url,
              "address": address, "person": person}


def pii_corpus(per_type: int = 60, seed: int = 0) -> list[tuple[str, str, str]]:
    """``per_type`` sentences per entity type, half English and half Chinese: (text, type, value)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, make in GENERATORS.items():
        for i in range(per_type):
            if kind in ("person", "address"):  # sentences of their own: the shared templates suit neither
                text, value = make(rng)
                rows.append((text, kind, value))
                continue
            value = make(rng)
            templates = _EN if i % 2 == 0 else _ZH
            rows.append((templates[int(rng.integers(len(templates)))].format(value), kind, value))
    return rows


_PLACES = ["New York", "San Francisco", "Hong Kong", "Buenos Aires", "Cape Town", "Kuala Lumpur"]
_ORGS = ["Apple", "Google Cloud", "Microsoft Teams", "General Electric", "Royal Mail", "Deutsche Bahn"]
_PLACES_ZH = ["北京", "上海", "广州", "深圳", "成都", "杭州"]


def clean_corpus(n: int = 300, seed: int = 1) -> list[str]:
    """Sentences with dates, prices, years, times, quantities, order numbers, organisations and places
    and no PII."""
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
        # capitalised words, organisations, places and streets without a house number: no names, no addresses
        lambda: f"The {rng.choice(_PLACES)} office opened in {rng.integers(1990, 2031)} with {rng.integers(2, 500)} staff.",
        lambda: f"{rng.choice(_ORGS)} released version {rng.integers(1, 20)}.{rng.integers(0, 10)} on Monday.",
        lambda: f"Turn left on Main Street after {rng.integers(50, 900)} metres and park near Victoria Station.",
        lambda: f"Chapter {rng.integers(1, 30)} covers the French Revolution and the Industrial Age.",
        lambda: f"Dear Customer, parcel {d(10)} from Hong Kong is on its way; contact Customer Service with questions.",
        lambda: f"我们在{rng.choice(_PLACES_ZH)}的{rng.integers(2, 90)}家门店都在营业，{rng.integers(1, 12)}点关门。",
        lambda: f"请于{rng.integers(1, 13)}月{rng.integers(1, 29)}日前到{rng.integers(1, 9)}号窗口办理，客服电话见官网。",
        lambda: f"{rng.choice(_PLACES_ZH)}大学的研究表明，{rng.integers(10, 90)}%的学生每天锻炼。",
    ]
    return [makers[int(rng.integers(len(makers)))]() for _ in range(n)]
