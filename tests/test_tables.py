import pytest

from sparselib.course.tables import html_table


def test_dict_rows_become_an_html_table_with_one_row_each():
    t = html_table([{"method": "wanda", "ppl": 21.34567}, {"method": "a<b", "ppl": 3.0}])
    page = t._repr_html_()
    assert page.count("<tr>") == 3 and "<th>method</th>" in page
    assert "21.35" in page and "a&lt;b" in page        # escaped, 4 significant digits
    assert "|" not in page


def test_sequence_rows_need_a_header_and_the_right_width():
    with pytest.raises(TypeError, match="header"):
        html_table([[1, 2]])
    with pytest.raises(ValueError, match="one value per column"):
        html_table([[1, 2, 3]], header=["a", "b"])
    assert "b" in repr(html_table([[1, 2]], header=["a", "b"]))
