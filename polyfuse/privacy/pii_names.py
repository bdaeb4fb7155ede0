"""Person names and postal addresses in English and Chinese text, by rules: the offline fallback
where no named-entity model is installed (none is on the package registries this project builds
from), and the same code in training, the torch-free runtime and the server.

Names are found where the text says it is a name, never from capitalisation alone: after a title
(``Dr. Jane Roe``), a cue (``my name is``, ``Dear``, ``Name:``, ``patient``, ``contact`` + two
capitalised words), a common given name followed by a capitalised surname (``Maria Lopez``), or in
Chinese a common surname after a cue (``姓名：``, ``我叫``, ``患者``, ``联系人``) or before a form
of address (``王先生``, ``李娜女士``). Addresses need a structure: a house number and a street
(``221B Baker Street``, ``Hauptstraße 5``, ``12 rue de la Paix``, ``PO Box 77``), or in Chinese a
road with a 号 number or an estate with a building/unit/room (``朝阳区建国路88号``,
``幸福小区3栋2单元501室``). A name with no cue ("Smith called") or an address without a number
is missed; recall and false positives are measured in ``benchmarks/privacy.py``.
"""
from __future__ import annotations

import re
from typing import Iterator

# -- person names, Latin script
_UP, _LO = "A-ZÀ-ÖØ-Þ", "a-zß-öø-ÿ"
_WORD = rf"(?:Mc|Mac|O'|D')?[{_UP}][{_LO}]+(?:[-'][{_UP}]?[{_LO}]+)?"
_NAME = rf"{_WORD}(?:\s+(?:[{_UP}]\.\s*)?{_WORD}){{0,2}}"  # First [M.] [Middle] Last
_TITLE = (r"(?<![A-Za-z])(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Sir|Dame|Madam|Mme|Mlle|Herr|Frau|Sr|Sra|Srta"
          r"|Capt|Rev|Hon)\.?\s+")
_STRONG_CUE = (r"(?:(?:[Mm]y|[Hh]is|[Hh]er|[Tt]heir|[Yy]our|[Pp]atient'?s?)\s+(?:full\s+)?name\s+is|[Nn]ame\s*[:=]|"
               r"[Nn]amed|[Dd]ear|[Ss]igned(?:\s++by)?(?:\s*+:)?|[Rr]egards,|[Ss]incerely,|[Aa]ttn\.?:?|[Aa]ttention:)\s+")
_WEAK_CUE = (r"(?:\b[Ii] am|\b[Ii]'m|\b[Tt]his is|[Cc]ontact|[Pp]atient|[Cc]ustomer|[Cc]lient|[Ss]poke (?:to|with)"
             r"|[Aa]sk for|[Mm]eet)\s+")
_SURNAME = rf"\s+(?:[{_UP}]\.\s*)?{_WORD}(?:\s+{_WORD})?"
# Common given names across many languages: a capitalised word after one of them is taken as a
# surname. Words that are also everyday English (Will, May, Mark, Grace, Hope, Bill...) are left out.
_GIVEN = set("""
james john robert michael william david richard joseph thomas charles christopher daniel matthew anthony
donald steven paul andrew joshua kenneth kevin brian george edward ronald timothy jason jeffrey ryan jacob
gary nicholas eric jonathan stephen larry justin scott brandon benjamin samuel gregory alexander patrick
jack dennis jerry tyler aaron jose adam nathan henry douglas zachary peter kyle walter ethan jeremy harold
keith christian roger noah gerald carl terry sean austin arthur lawrence jesse dylan bryan joe jordan
albert logan randy ralph roy eugene wayne louis philip bobby johnny mary patricia jennifer linda elizabeth
barbara susan jessica sarah karen nancy lisa betty margaret sandra ashley kimberly emily donna michelle
dorothy carol amanda melissa deborah stephanie rebecca sharon laura cynthia kathleen amy shirley angela
helen anna brenda pamela nicole emma samantha katherine christine debra rachel catherine carolyn janet
ruth maria heather diane virginia julie joyce victoria olivia kelly christina lauren joan evelyn judith
megan cheryl andrea hannah martha jacqueline gloria teresa ann sara madison frances kathryn janice jean
abigail alice judy sophia denise amber doris marilyn danielle beverly isabella theresa diana natalie
brittany charlotte marie kayla alexis lori mohammed muhammad ahmed ali omar fatima aisha hassan hussein
yusuf ibrahim mustafa layla zainab priya rahul amit anil sunil ravi deepak pooja anjali neha vijay
sanjay raj arjun rohan aditya kavya ananya lakshmi hiroshi takeshi yuki haruto sakura yui kenji akira
minjun jiwoo seojun hyun jisoo carlos juan luis miguel javier alejandro diego fernando pablo sergio
manuel antonio francisco rafael sofia lucia valentina camila isabel carmen rosa elena ana laura giulia
francesca giuseppe giovanni marco luca matteo alessandro pierre jean louis camille chloe manon lucas
hans klaus jurgen stefan lukas felix anna lena katharina ivan dmitri sergei alexei nikolai olga natasha
svetlana tatiana irina piet jan sven lars erik ingrid astrid wei fang lei jing ming hui yan xin
""".split())

_TITLED = re.compile(_TITLE + rf"(?P<n>{_NAME})")
_STRONG = re.compile(_STRONG_CUE + rf"(?P<n>{_NAME})")
_WEAK = re.compile(_WEAK_CUE + rf"(?P<n>{_WORD}\s+(?:[{_UP}]\.\s*)?{_WORD}(?:\s+{_WORD})?)")
_FIRST_LAST = re.compile(rf"(?<![{_UP}{_LO}'-])(?P<n>(?P<g>[{_UP}][{_LO}]+){_SURNAME})")
# Words after a cue that start a phrase, not a name ("Dear Sir", "This is Monday", "from New York")
_NOT_NAMES = set("""
the a an this that these those it its our your my his her their sir madam all team customer customers
support service sales monday tuesday wednesday thursday friday saturday sunday january february march
april june july august september october november december today tomorrow yesterday new north south
east west central united great university hospital street road avenue city county state please thanks
thank hello hi dear mr mrs ms dr and or but if then also yes no not me you us river station line lake bay island
airport beach center centre college school bank church bridge hotel tower hall mall office desk department
group company inc ltd corp club market museum library court house
""".split())


def _surnames(alternatives: str) -> str:
    """The surnames as a regex tried in a few steps at each character: the compound ones first, as
    listed, then the single characters as one class instead of ~300 alternatives tried in turn."""
    names = alternatives.split("|")
    compound = [n for n in names if len(n) > 1]
    assert names[: len(compound)] == compound, "compound surnames first, so 欧阳 wins over 欧"
    return "|".join(compound) + "|[" + "".join(n for n in names if len(n) == 1) + "]"


def _han_except(stop: str) -> str:
    """A class of the CJK ideographs less the ``stop`` characters, one test per character where a
    negative lookahead and a range were two."""
    cut = sorted({ord(c) for c in stop if "\u4e00" <= c <= "\u9fff"})
    ranges, lo = [], 0x4E00
    for c in cut + [0xA000]:
        if lo < c:
            ranges.append(chr(lo) if lo == c - 1 else f"{chr(lo)}-{chr(c - 1)}")
        lo = c + 1
    return "[" + "".join(ranges) + "]"


# -- person names, Chinese
_SURNAMES_CN = _surnames("欧阳|司马|上官|诸葛|东方|皇甫|尉迟|公孙|慕容|令狐|司徒|夏侯|长孙|宇文|"
                "王|李|张|刘|陈|杨|黄|赵|吴|周|徐|孙|马|朱|胡|郭|何|高|林|罗|郑|梁|谢|宋|唐|许|韩|冯|邓|曹|彭|曾|肖|"
                "田|董|袁|潘|于|蒋|蔡|余|杜|叶|程|苏|魏|吕|丁|任|沈|姚|卢|姜|崔|钟|谭|陆|汪|范|金|石|廖|贾|夏|韦|"
                "付|傅|方|白|邹|孟|熊|秦|邱|江|尹|薛|闫|阎|段|雷|侯|龙|史|陶|黎|贺|顾|毛|郝|龚|邵|万|钱|严|覃|武|"
                "戴|莫|孔|向|汤|常|温|康|施|文|牛|樊|葛|邢|安|齐|易|乔|伍|庞|颜|倪|庄|聂|章|鲁|岳|翟|殷|詹|申|欧|"
                "耿|关|兰|焦|俞|左|柳|甘|祝|包|宁|尚|符|舒|阮|柯|纪|梅|童|凌|毕|单|季|裴|霍|涂|成|苗|谷|盛|曲|翁|"
                "冉|骆|蓝|路|游|辛|靳|管|柴|蒙|鲍|华|喻|祁|蒲|房|滕|屈|饶|解|牟|艾|尤|阳|时|穆|农|司|卓|古|吉|缪|"
                "简|车|项|连|芦|麦|褚|娄|窦|戚|岑|景|党|宫|费|卜|冷|晏|席|卫|米|柏|宗|瞿|桂|全|佟|应|臧|闵|苟|邬|"
                "边|卞|姬|师|仇|栾|隋|商|刁|沙|荣|巫|寇|桑|郎|甄|丛|仲|虞|敖|巩|明|佘|池|查|麻|苑|迟|邝")

# characters that end a name: function words and the usual words after one
_STOP_CN = "的了是在和与及或从向到往给被把将已于说来去要会也都就还很又再有为对以等着过吗呢吧啊，。、；：！？（）()\"'“”‘’《》 \t\n"
_GIVEN_CN = _han_except(_STOP_CN)
_CUE_CN = (r"(?:姓名|名字|本人|我叫|我是|名叫|叫做|患者|病人|联系人|收件人|收货人|寄件人|申请人|经办人|负责人|"
           r"签名|签字|家属|监护人|法定代表人|业主)[:：]?\s*")
_CN_CUED = re.compile(_CUE_CN + rf"(?P<n>(?:{_SURNAMES_CN}){_GIVEN_CN}{{1,2}})")
# 先生/女士 follow names; the professional titles are also plain nouns (语文老师, 项目经理, 好医生), so a
# name before one must start the text or a clause, or follow a verb or preposition (请王经理, 和张医生)
# words before a title that start with a surname's character but name a role: 项目经理, 高级工程师
_NOUNS_CN = {"项目", "高级", "常务", "金牌", "安全", "程序", "华人", "主治", "毛笔", "江湖", "万能", "宋体"}
_CN_TITLED = re.compile(rf"(?P<n>(?:{_SURNAMES_CN}){_GIVEN_CN}{{0,2}})(?:先生|女士)")
_PROFESSIONS_CN = "小姐|同学|老师|医生|大夫|教授|经理|主任|师傅|阿姨|律师|护士|院长|总监|总经理|董事长|工程师"
_CN_PROFESSIONAL = re.compile(
    rf"(?:(?<![\u4e00-\u9fff])|(?<=[请给找问跟向让叫对和与及同被由见称谢系诉帮]))(?P<n>(?:{_SURNAMES_CN}){_GIVEN_CN}{{0,2}})"
    rf"(?:{_PROFESSIONS_CN})")

# -- addresses, Latin script
_STREET = ("(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Way|Terrace|Square|Parkway|Highway|Close|Crescent"
           "|Row|Mews|Gardens|Grove|Circle|Trail|Walk)|(?:St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Sq|Pkwy|Hwy|Cres|Cir)\\b\\.?")
_UNIT = r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?[A-Za-z0-9-]+)?"
_TAIL = (rf"(?:,\s*[{_UP}][{_LO}]+(?:\s[{_UP}][{_LO}]+){{0,2}},?\s*(?:[A-Z]{{2}}\s+\d{{5}}(?:-\d{{4}})?"
         r"|[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}))?")  # ", City, ST 12345" or ", London SW1A 1AA"
_EN_ADDRESS = re.compile(
    rf"(?<![\w-])\d{{1,5}}[A-Za-z]?(?:-\d{{1,5}})?,?\s+(?:(?:[NSEW]\.?|\d{{1,3}}(?:st|nd|rd|th)|[{_UP}][{_LO}]+)\s+){{1,4}}"
    rf"(?:{_STREET})(?![\w]){_UNIT}{_TAIL}")
# At most four particles ("de la", "de los", "de l'"): with the spaces optional, "della" also reads as
# "del"+"la", and an unbounded run of them had 2^n readings to try before failing
_NAME_PARTICLES = r"(?:(?:de|du|des|la|le|les|l'|d'|di|del|della|dei|los|las|da|do|dos)\s*+){0,4}"
_EU_ADDRESS = re.compile(
    rf"(?<![\w-])(?:\d{{1,4}}[a-z]?,?\s+(?:rue|avenue|boulevard|bd|place|chemin|allée|impasse|quai)\s+{_NAME_PARTICLES}"
    rf"[{_UP}][\w'-]+(?:\s[{_UP}][\w'-]+){{0,2}}"  # French: 12 rue de la Paix
    rf"|[{_UP}][{_LO}]+(?:straße|strasse|str\.|weg|platz|gasse|allee|ring|damm|ufer|steig)\s+\d{{1,4}}[a-z]?"
    rf"|(?:Calle|Avenida|Av\.|Carrer|Rua|Paseo|Plaza|Via|Viale|Piazza|Corso)\s+{_NAME_PARTICLES}[{_UP}][\w'-]+"
    rf"(?:\s[{_UP}][\w'-]+){{0,2}},?\s+(?:n\.?º\s*)?\d{{1,4}})(?:,\s*\d{{4,5}}\s+[{_UP}][{_LO}]+)?")
_PO_BOX = re.compile(r"(?<![\w])P\.?\s?O\.?\s+Box\s+\d{1,6}\b", re.IGNORECASE)

# -- addresses, Chinese: optional administrative levels, then a road and a number or an estate and a room
_PLACE_STOP = _STOP_CN + "住址家寄送请我你他她它们地点位置电话联系号码"
_P = _han_except(_PLACE_STOP)
_NUM = r"[0-9０-９一二三四五六七八九十百零〇]"
# Each level atomic, its name without its own suffix (杭州 before 市, not 市市 before 市): one reading
# a level where the lazy bodies had ~100 ways to split 省市区镇... before failing at the road
_ADMIN = (rf"(?>{_han_except(_PLACE_STOP + '省区')}{{2,3}}+(?:省|自治区))?(?>{_han_except(_PLACE_STOP + '市')}{{2,4}}+市)?"
          rf"(?>{_han_except(_PLACE_STOP + '区县旗')}{{1,4}}+(?:区|县|旗))?"
          rf"(?>{_han_except(_PLACE_STOP + '镇乡')}{{1,5}}?(?:镇|乡|街道))?")
# One possessive run of numerals and letters: no suffix starts with either, so giving some back never
# helps, while the old (?:NUM+|letter)+ split a run of n digits 2^n ways before failing
_ROOMS = rf"(?:{_NUM}|[A-Za-z])++(?:号楼|栋|幢|座|单元|层|楼|室|号)"
_ROAD = rf"(?:大道|大街|路|街|巷|弄|胡同)(?:{_NUM}++段)?{_NUM}++(?:-{_NUM}++)?号"
_ESTATE = r"(?:小区|花园|公寓|大厦|新村|家园|苑)"
_CN_ADDRESS = re.compile(
    rf"{_ADMIN}(?:{_P}{{1,6}}?{_ROAD}(?:院)?(?:{_ROOMS})*|{_P}{{2,6}}?{_ESTATE}(?:{_ROOMS})+)")
# What every match ends in, after at most 29 place characters (the longest administrative levels,
# 6+5+5+7, then 6 before the road): :func:`_cn_addresses` tries the full rule only that close before one
_CN_ENDING = re.compile(rf"(?P<road>{_ROAD})|{_ESTATE}{_ROOMS}")
_CN_REACH = 29
_CN_TRIES = 6
_CN_LEAD = re.compile(rf"{_P}{{0,{_CN_REACH}}}\Z")  # the place characters just before an ending


# The Chinese rules try a long alternation at every character; most texts lack what they end in, and
# one search for that first makes them 10-20x cheaper there (de-identification runs on every request)
_GATES = {_CN_TITLED: re.compile("先生|女士"), _CN_PROFESSIONAL: re.compile(_PROFESSIONS_CN),
          _CN_ENDING: re.compile("[号栋幢座元层楼室]"), _CN_CUED: re.compile("[\u4e00-\u9fff]")}
# likewise the Latin rules: each needs a capital (a name) or a digit (a house number), and the ~1 us a
# character the Latin scans cost was most of redacting a Chinese text
_GATES.update({rx: re.compile(f"[{_UP}]") for rx in (_TITLED, _FIRST_LAST)})
# the cue rules try their alternation of cues at every character: a substring search of the lowered text
# for the words every cue holds is ~50x cheaper, and most texts hold none of them
_WORD_GATES = {_STRONG: ("name", "dear", "signed", "regards", "sincerely", "attn", "attention"),
               _WEAK: ("i am", "i'm", "this is", "contact", "patient", "customer", "client", "spoke", "ask for", "meet")}
_GATES.update({rx: re.compile(r"\d") for rx in (_EN_ADDRESS, _EU_ADDRESS, _PO_BOX)})


def _scan(rx: re.Pattern, text: str) -> Iterator[re.Match]:
    gate, words = _GATES.get(rx), _WORD_GATES.get(rx)
    if gate is not None and not gate.search(text):
        return iter(())
    if words is not None:
        lower = text.lower()
        if not any(w in lower for w in words):
            return iter(())
    return rx.finditer(text)


def _names_latin(text: str) -> Iterator[tuple[int, int]]:
    for rx in (_TITLED, _STRONG, _WEAK):
        for m in _scan(rx, text):
            words = [w.lower().strip(".,") for w in m.group("n").split()]
            if rx is _WEAK and any(w in _NOT_NAMES for w in words):  # "contact Apple Support"
                continue
            if words[0] not in _NOT_NAMES:
                yield _trim(m, text)
    for m in _scan(_FIRST_LAST, text):
        surname = m.group("n")[len(m.group("g")):].split()
        if m.group("g").lower() in _GIVEN and surname[0].lower().rstrip(".") not in _NOT_NAMES:
            yield _trim(m, text)


def _trim(m: re.Match, text: str) -> tuple[int, int]:
    """The name group's span, less trailing words that are cue or stop words ("John Smith Thanks")."""
    start, end = m.span("n")
    words = list(re.finditer(r"\S+", text[start:end]))
    while len(words) > 1 and words[-1].group().lower().strip(".,") in _NOT_NAMES:
        words.pop()
    return start, start + words[-1].end()


def find_persons(text: str) -> Iterator[tuple[int, int]]:
    """Spans of person names (overlaps possible; the caller keeps the longest)."""
    yield from _names_latin(text)
    for rx in (_CN_CUED, _CN_TITLED):
        yield from [m.span("n") for m in _scan(rx, text) if m.group("n")]
    yield from [m.span("n") for m in _scan(_CN_PROFESSIONAL, text) if m.group("n") and m.group("n")[:2] not in _NOUNS_CN]


def _cn_addresses(text: str) -> Iterator[tuple[int, int]]:
    """``_CN_ADDRESS.finditer``'s spans, the rule tried only where a match can start: in the run of
    place characters (at most ``_CN_REACH``) just before an ending, or on its first character (大 of
    大街, whose 街 is a road too). Tried at every character, text of administrative words with no
    ending (一一省一一市一区一镇..., ~100 ways to read them as levels, each failing at the road) cost
    ~5 us a character; the endings are found in one linear scan.

    At most ``_CN_TRIES`` starts are tried an ending: an address begins within a few characters of
    where the run of place characters does, and 29 failing starts before each of a text's endings
    (市市...市路1号 repeated) held de-identification to 0.3 MB/s. Past them the rest of the run is
    redacted with the address, from the next start to the rule's end at the road: more than the
    address, never less (a text that dense in place words is rare, and privacy errs that way)."""
    pos = 0
    for ending in _scan(_CN_ENDING, text):
        start = _CN_LEAD.search(text, max(pos, ending.start() - _CN_REACH), ending.start()).start()
        # the fewest place characters before the ending a match needs: one before a road (none for 大 of
        # 大街), two before an estate; a text of endings alone (小区1栋 repeated) has none to try
        need = (0 if text[ending.start()] == "大" else 1) if ending.group("road") else 2
        if ending.start() - start < need:
            pos = max(pos, ending.start() + 1)
            continue
        tries = 0
        while start <= ending.start():
            if tries == _CN_TRIES:
                near = _CN_ADDRESS.match(text, max(start, ending.start() - 6))
                yield start, near.end() if near else ending.end()
                pos = start = near.end() if near else ending.end()
                break
            m = _CN_ADDRESS.match(text, start)
            tries += 1
            if m is None:
                start += 1
                continue
            yield m.span()
            pos = start = m.end()
            tries = 0
        pos = max(pos, ending.start() + 1)


def find_addresses(text: str) -> Iterator[tuple[int, int]]:
    """Spans of postal addresses (overlaps possible; the caller keeps the longest)."""
    for rx in (_EN_ADDRESS, _EU_ADDRESS, _PO_BOX):
        for m in _scan(rx, text):
            if m.end() > m.start():
                yield m.span()
    yield from _cn_addresses(text)
