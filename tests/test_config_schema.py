"""The whole configuration schema, key by key: each refuses a bad value clearly.

test_config.py's ``BAD_VALUES`` holds one or more bad values of the keys,
each checked there to give its one problem line.  This module adds the rows
it lacks (:data:`MORE_BAD_VALUES`) and checks that, together, they cover
every key of every section: each key of each rule table in
:mod:`ocsbal.config` has a row whose value that key's own rule refuses, so
a key added to a table without a bad-value row fails here, naming it.
"""

from __future__ import annotations

from typing import Any

import pytest

from ocsbal import config
from ocsbal.config import (
    _ADMIN_RULES,
    _LIMITS_RULES,
    _LOG_RULES,
    _MONITOR_RULES,
    _POOL_RULES,
    _PORT_RULE,
    _PROTOCOL_RULE,
    _SECTIONS,
    _SERVER_RULES,
    _TLS_RULES,
    _Rule,
)
from test_config import BAD_VALUES, problems, with_key

#: Rows BAD_VALUES lacks: (section, key, value, what the message says).  Its
#: [tls] file rows are refused by a relation (only used by mode = terminate),
#: never by the keys' own rule.
MORE_BAD_VALUES = [
    ("tls", "certificate", "", "must be a file name"),
    ("tls", "trust", "", "must be a file name"),
    ("tls", "client_certificate", "", "must be a file name"),
]

ROWS = BAD_VALUES + MORE_BAD_VALUES

#: Each section with a rule table: how its name looks, and the table.
TABLES: dict[str, dict[str, _Rule[Any]]] = {
    "pool": _POOL_RULES,
    "server:NAME": _SERVER_RULES,
    "monitor": _MONITOR_RULES,
    "tls": _TLS_RULES,
    "admin": _ADMIN_RULES,
    "limits": _LIMITS_RULES,
    "log": _LOG_RULES,
}


def table_of(section: str) -> str:
    return "server:NAME" if section.startswith("server:") else section


def refuses(rule: _Rule[Any], text: str) -> str | None:
    """What ``rule`` says of ``text``, or None if it takes it."""
    try:
        rule.read(text)
    except ValueError as e:
        return str(e)
    return None


def own_rule_message(section: str, key: str, value: str) -> str | None:
    """What the rule of ``key`` itself says of ``value``, or None if it takes it.

    In [ports] the key is a port number and the value its protocol.
    """
    if section == "ports":
        port = refuses(_PORT_RULE, key)
        return f"the port {port}" if port else refuses(_PROTOCOL_RULE, value)
    rule = TABLES[table_of(section)].get(key)
    return None if rule is None else refuses(rule, value)


def test_the_sections_are_those_with_tables() -> None:
    """Every section the reader knows is a table here, or [ports]: none is missed."""
    assert [pattern.pattern for pattern, _ in _SECTIONS] == [
        r"pool\Z",
        r"ports\Z",
        "server:",
        r"monitor\Z",
        r"tls\Z",
        r"admin\Z",
        r"limits\Z",
        r"log\Z",
    ]
    assert config._SECTION_NAMES == (
        "[pool], [ports], [server:NAME], [monitor], [tls], [admin], [limits], [log]"
    )
    assert set(TABLES) == {
        *("pool", "server:NAME", "monitor", "tls", "admin", "limits", "log")
    }


@pytest.mark.parametrize(
    ("table", "key"),
    [(name, key) for name, rules in TABLES.items() for key in rules],
)
def test_every_key_has_a_bad_value_its_own_rule_refuses(table: str, key: str) -> None:
    """A row for each key of each table, refused by that key's rule (not a relation).

    Fails for a key added to a rule table without a row in BAD_VALUES (or
    MORE_BAD_VALUES).
    """
    rows = [
        (section, value)
        for section, k, value, _ in ROWS
        if table_of(section) == table and k == key
    ]
    assert rows, f"no bad-value row for [{table}] {key}: add one to BAD_VALUES"
    refused = [v for s, v in rows if own_rule_message(s, key, v) is not None]
    assert refused, f"[{table}] {key}: no row its own rule refuses, only {rows}"


def test_the_ports_section_has_a_bad_port_and_a_bad_protocol() -> None:
    """[ports] has no table: its keys are port numbers, its values protocols."""
    ports = [(k, v) for s, k, v, _ in ROWS if s == "ports"]
    assert any(refuses(_PORT_RULE, k) for k, _ in ports), ports
    assert any(refuses(_PROTOCOL_RULE, v) for _, v in ports), ports


@pytest.mark.parametrize("table", list(TABLES))
def test_an_unknown_key_names_every_allowed_key(table: str) -> None:
    """Each section with a table has an unknown-key row, listing the whole table."""
    keys = ", ".join(TABLES[table])
    unknown = [
        problems(with_key(section, key, value))
        for section, key, value, _ in ROWS
        if table_of(section) == table and key not in TABLES[table]
    ]
    assert unknown, f"no unknown-key row for [{table}]"
    for [line] in unknown:
        assert line.endswith(f": unknown key; allowed: {keys}"), line


@pytest.mark.parametrize(("section", "key", "value", "message"), MORE_BAD_VALUES)
def test_each_added_bad_value_is_named_with_what_is_allowed(
    section: str, key: str, value: str, message: str
) -> None:
    """The rows added here read as BAD_VALUES' rows do in test_config.py."""
    [line] = problems(with_key(section, key, value))
    assert line.startswith(f"t.ini: [{section}] {key} = {value}: ")
    assert message in line


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    ROWS,
    ids=[f"{s}-{k}-{v}" for s, k, v, _ in ROWS],
)
def test_each_problem_is_one_line_saying_what_its_rule_says(
    section: str, key: str, value: str, message: str
) -> None:
    """Every row gives one line: file, section, key, value, then what is allowed.

    Where the key's own rule refuses the value, the line ends with exactly
    what that rule says, the same words an embedder's ValueError carries;
    otherwise it is an unknown key or a relation between keys.
    """
    [line] = problems(with_key(section, key, value))
    assert "\n" not in line
    prefix = f"t.ini: [{section}] {key} = {value}: "
    assert line.startswith(prefix)
    said = line.removeprefix(prefix)
    assert message in said
    own = own_rule_message(section, key, value)
    if own is not None:
        assert said == own
    else:
        assert said.startswith(("unknown key; allowed: ", "is only used by ", "must "))
