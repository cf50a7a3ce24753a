"""Personal data in free text (civicbus.policy.pii): each kind in its spellings, ordinary numbers
left alone, and recall and precision on a generated, labelled corpus of hotline calls, petitions
and status notes."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from civicbus.policy.pii import find_personal, luhn, mask_free_text, valid_id_number

FULL_WIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})


@pytest.mark.parametrize(
    "text, kind",
    [
        ("13812345678", "phone"), ("138 1234 5678", "phone"), ("138-1234-5678", "phone"), ("+86 13812345678", "phone"),
        ("0086-138-1234-5678", "phone"), ("(+86)13812345678", "phone"), ("１３８１２３４５６７８", "phone"),
        ("１３８－１２３４－５６７８", "phone"), ("010-65123456", "landline"), ("(010)65123456", "landline"),
        ("0755 2654 3210", "landline"), ("+86 10 6512 3456", "landline"), ("０１０－６５１２３４５６", "landline"),
        ("110101199003074514", "id_number"), ("11010519491231002X", "id_number"), ("11010519491231002x", "id_number"),
        ("110101 19900307 4514", "id_number"), ("110101900307451", "id_number"),
        ("6222021234567890128", "bank_card"), ("6222 0212 3456 7890 128", "bank_card"), ("4111-1111-1111-1111", "bank_card"),
        ("zhang.san@163.com", "email"), ("li_si+12345@example.gov.cn", "email"),
        ("京A12345", "plate"), ("沪B·1A234", "plate"), ("京AD12345", "plate"), ("粤B12345D", "plate"), ("浙A 12345", "plate"),
    ],
)
def test_each_kind_in_its_spellings_is_found_whole(text, kind):
    [finding] = find_personal(f"请联系{text}谢谢")
    assert (finding.kind, finding.start, finding.end) == (kind, 3, 3 + len(text))
    masked, kinds = mask_free_text(f"请联系{text}谢谢")
    assert kinds == (kind,) and "*" in masked and text not in masked


@pytest.mark.parametrize(
    "text",
    [
        "朝阳路12号院3号楼2单元501室", "2026年11月30日14:30", "2026-11-30", "工单号2026113000042", "案件编号GD2026113000042",
        "拖欠工资38000元", "第3次反映", "拨打12345热线", "110报警", "统一社会信用代码91110108MA01ABCD3X", "39.9475,116.4075",
        "订单20261130123", "京藏高速G6", "110101199003074515",  # an ID number with a wrong check digit
        "6222021234567890126",  # a card number failing Luhn
        "6512345",  # a 7-digit local number: without its area code it is an ordinary number
    ],
)
def test_ordinary_numbers_stay(text):
    assert find_personal(text) == [] and mask_free_text(text) == (text, ())


def test_checksums():
    assert valid_id_number("110101199003074514") and not valid_id_number("110101199003074515")
    assert valid_id_number("11010519491231002X") and not valid_id_number("110105194912310021")
    assert not valid_id_number("990101199003074514")  # no such region
    assert not valid_id_number("110101199013074514")  # no 13th month
    assert luhn("4111111111111111") and not luhn("4111111111111112")


def test_masks_keep_the_text_readable_and_hide_each_value():
    masked, kinds = mask_free_text("市民张三(手机13812345678,身份证110101199003074514)反映3号楼门口路面坑洼，车牌京A12345，邮箱zs@163.com")
    assert masked == "市民张三(手机138****5678,身份证110***********4514)反映3号楼门口路面坑洼，车牌京A***45，邮箱***@163.com"
    assert kinds == ("email", "id_number", "phone", "plate")


# ---- the labelled corpus ---------------------------------------------------------------------

SEED = 20261201
CORPUS_SIZE = 1_200
REGIONS = ("110101", "110105", "310104", "440305", "510107", "330106", "420102", "370202", "610113", "500103")
AREA_CODES = ("010", "021", "022", "023", "020", "025", "028", "0755", "0371", "0571", "0532", "0898")
PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
DOMAINS = ("qq.com", "163.com", "126.com", "sina.com", "gmail.com", "example.gov.cn")
NAMES = ("张三", "李四", "王伟", "刘芳", "陈静", "杨磊")
PLACES = ("安定门内大街", "交道口南大街", "新街口北大街", "南山大道", "蛇口工业路")
ISSUES = ("路面坑洼", "噪声扰民", "占道经营", "拖欠工资", "物业不作为", "垃圾未清运", "路灯损坏")


@dataclass
class Text:
    text: str
    labels: list[tuple[str, int, int]]  # (kind, start, end) of every identifier of a person


class Corpus:
    """Texts as hotline clerks, petition officers and departments write them, from templates."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def spelled(self, value: str, groups: tuple[int, ...]) -> str:
        """Digits written in groups with spaces or dashes, or not at all."""
        separator = self.rng.choice(("", "", " ", "-"))
        if not separator:
            return value
        parts, at = [], 0
        for size in groups:
            parts.append(value[at : at + size])
            at += size
        return separator.join(parts + ([value[at:]] if at < len(value) else []))

    def full_width(self, text: str) -> str:
        return text.translate(FULL_WIDTH) if self.rng.random() < 0.15 else text

    # one generator per kind: (kind, text as written)
    def phone(self) -> tuple[str, str]:
        number = "1" + self.rng.choice("3456789") + self.digits(9)
        text = self.spelled(number, (3, 4, 4))
        prefix = self.rng.choice(("", "", "", "+86 ", "+86-", "0086 ", "(+86)"))
        return "phone", self.full_width(prefix + text)

    def landline(self) -> tuple[str, str]:
        area = self.rng.choice(AREA_CODES)
        local = self.rng.choice("23456789") + self.digits(7 if len(area) == 3 or self.rng.random() < 0.5 else 6)
        style = self.rng.random()
        if style < 0.15:
            text = f"+86 {area[1:]} {local}"
        elif style < 0.3:
            text = f"({area}){local}"
        else:
            text = area + self.rng.choice(("-", "-", " ", "")) + self.spelled(local, (len(local) - 4,))
        return "landline", self.full_width(text)

    def id_number(self) -> tuple[str, str]:
        region = self.rng.choice(REGIONS)
        born = f"{self.rng.randint(1950, 2005)}{self.rng.randint(1, 12):02d}{self.rng.randint(1, 28):02d}"
        if self.rng.random() < 0.15:
            return "id_number", region + born[2:] + self.digits(3)  # the 15-digit kind
        body = region + born + self.digits(3)
        weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
        check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]
        if check == "X" and self.rng.random() < 0.3:
            check = "x"
        number = body + check
        return "id_number", self.full_width(f"{number[:6]} {number[6:14]} {number[14:]}" if self.rng.random() < 0.1 else number)

    def bank_card(self) -> tuple[str, str]:
        body = "62" + self.digits(self.rng.choice((13, 14, 15, 16)))
        check = next(d for d in "0123456789" if luhn(body + d))
        return "bank_card", self.spelled(body + check, (4, 4, 4, 4))

    def email(self) -> tuple[str, str]:
        local = "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(self.rng.randint(3, 8)))
        local += self.rng.choice(("", ".", "_")) + self.digits(self.rng.randint(0, 4))
        return "email", f"{local.strip('._') or 'a'}@{self.rng.choice(DOMAINS)}"

    def plate(self) -> tuple[str, str]:
        head = self.rng.choice(PROVINCES) + self.rng.choice(PLATE_LETTERS)
        style = self.rng.random()
        if style < 0.2:
            tail = self.rng.choice("DF") + self.digits(5)  # new-energy, small car: 8 characters
        elif style < 0.3:
            tail = self.digits(5) + self.rng.choice("DF")  # new-energy, large vehicle
        else:  # five digits, or one letter among the first two
            chars = list(self.digits(5))
            if self.rng.random() < 0.4:
                chars[self.rng.randrange(2)] = self.rng.choice(PLATE_LETTERS)
            tail = "".join(chars)
        return "plate", head + self.rng.choice(("", "", "", "·", " ")) + tail

    # ordinary numbers, which must stay
    def ordinary(self) -> str:
        r = self.rng
        return r.choice((
            lambda: f"{r.randint(1, 300)}号",
            lambda: f"{r.randint(1, 30)}号院{r.randint(1, 20)}号楼{r.randint(1, 6)}单元{r.randint(1, 28)}{r.randint(1, 4):02d}室",
            lambda: f"2026年{r.randint(1, 12)}月{r.randint(1, 28)}日",
            lambda: f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} {r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
            lambda: f"工单号2026{r.randint(1, 12):02d}{r.randint(1, 28):02d}{self.digits(5)}",
            lambda: f"案件编号GD2026{self.digits(8)}",
            lambda: f"{r.randint(2, 200) * 100}元",
            lambda: f"第{r.randint(2, 9)}次",
            lambda: r.choice(("12345热线", "110", "120", "119")),
            lambda: f"{r.randint(20, 180)}平方米",
            lambda: f"共{r.randint(2, 60)}户",
            lambda: f"{r.randint(1, 33)}层",
            lambda: f"订单号2{self.digits(10)}",  # eleven digits, but no mobile number
            lambda: f"流水号2026{self.digits(14)}",  # eighteen digits, but no region code
            lambda: f"快递单号9{self.digits(15)}",  # sixteen digits, but no card
        ))()

    def text(self, channel: str) -> Text:
        r = self.rng
        kinds = [self.phone, self.landline, self.id_number, self.bank_card, self.email, self.plate]
        identifiers = [r.choice(kinds)() for _ in range(r.choice((0, 1, 1, 2, 2, 3)))]
        pieces: list[tuple[str, str | None]] = [(f"{channel}：", None)]
        if channel == "来电":
            pieces += [(f"市民{r.choice(NAMES)}反映{r.choice(PLACES)}", None), (self.ordinary(), None), (r.choice(ISSUES), None)]
        elif channel == "信访":
            pieces += [(f"信访人{r.choice(NAMES)}反映", None), (r.choice(ISSUES), None), ("，涉及", None), (self.ordinary(), None)]
        else:
            pieces += [("已到场处置，", None), (self.ordinary(), None), ("，", None), (r.choice(ISSUES), None), ("已处理", None)]
        for kind, value in identifiers:
            lead = {"phone": "，联系电话", "landline": "，座机", "id_number": "，身份证号", "bank_card": "，退款银行卡",
                    "email": "，邮箱", "plate": "，车牌"}[kind]
            pieces += [(lead, None), (value, kind)]
        pieces += [("，", None), (self.ordinary(), None), ("。", None)]
        text, labels = "", []
        for piece, kind in pieces:
            if kind:
                labels.append((kind, len(text), len(text) + len(piece)))
            text += piece
        return Text(text, labels)


def test_recall_and_precision_on_a_labelled_corpus_of_calls_petitions_and_notes():
    corpus = Corpus(SEED)
    texts = [corpus.text(channel) for channel in ("来电", "信访", "处置") for _ in range(CORPUS_SIZE // 3)]
    labelled = {(i, *label) for i, t in enumerate(texts) for label in t.labels}
    found = {(i, f.kind, f.start, f.end) for i, t in enumerate(texts) for f in find_personal(t.text)}
    recall = len(found & labelled) / len(labelled)
    precision = len(found & labelled) / len(found)
    print(f"\nPII corpus: {len(texts)} texts, {len(labelled)} identifiers of a person: recall {recall:.2%}, precision {precision:.2%}")
    assert len(texts) >= 1_000 and len(labelled) >= 1_000 and {label[1] for label in labelled} == {
        "phone", "landline", "id_number", "bank_card", "email", "plate"}
    assert recall >= 0.99, sorted(labelled - found)[:10]
    assert precision >= 0.95, sorted(found - labelled)[:10]
