"""Scripts and word segmentation for scripts with and without spaces."""

import pytest

from stages.text import dominant_script, split_words


@pytest.mark.parametrize(
    "text, script, words",
    [
        (
            "人人生而自由，在尊严和权利上一律平等。",
            "Hani",
            ["人", "人生", "而", "自由", "在", "尊严", "和", "权利", "上", "一律", "平等"],
        ),
        ("すべての人間は、生まれながらにして自由であり", "Jpan", None),
        ("มนุษย์ทั้งหลายเกิดมามีอิสระ", "Thai", None),
        ("មនុស្សទាំងអស់កើតមកមានសេរីភាព", "Khmr", None),
        ("လူတိုင်းသည် တူညီ လွတ်လပ်သော", "Mymr", None),
        ("Don't split stop-words, 42 times!", "Latn", ["Don't", "split", "stop-words", "42", "times"]),
    ],
)
def test_words_in_every_script(text, script, words):
    assert dominant_script(text) == script
    found = split_words(text, script)
    if words is not None:
        assert found == words
    assert len(found) >= 3 and all(word in text for word in found)


def test_no_letters_no_script():
    assert dominant_script("1234 !!") is None


def test_words_after_characters_past_the_basic_plane():
    """ICU counts offsets in UTF-16 units: an emoji or a rare ideograph (two units) must not shift every word
    after it."""
    assert split_words("😀สวัสดีครับ 🙏🏽 ทดสอบ", "Thai") == split_words("สวัสดีครับ ทดสอบ", "Thai")
    assert split_words("𠀀中文字符测试 你好", "Hani") == ["𠀀", *split_words("中文字符测试 你好", "Hani")]
