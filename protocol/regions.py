"""UN M49 sub-regions of the country domain: where a country the hub cannot show folds before the world.

Data, not code: each geographic sub-region of the UN Statistics Division's M49
standard (for Africa and the Americas, its intermediate regions: Eastern Africa,
Caribbean, South America, ...) with its numeric code and the country codes of
the country domain (protocol/countries.py) in it. Derived from the `UNregion` column of country_converter
1.3.2's country_data.tsv and checked against M49 (Nauru corrected to Micronesia);
Taiwan, which M49 does not list, is in Eastern Asia. `ZZ` (country unknown) has no
region: it folds straight into the world. tests/test_regions.py checks that every
other code of the domain has exactly one region.
"""

from __future__ import annotations

from typing import Final

from protocol.countries import UNKNOWN_COUNTRY

M49_REGIONS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("005", "South America", (
        "AR", "BO", "BR", "CL", "CO", "EC", "FK", "GF", "GY", "PE", "PY", "SR", "UY", "VE",
    )),
    ("011", "Western Africa", (
        "BF", "BJ", "CI", "CV", "GH", "GM", "GN", "GW", "LR", "ML", "MR", "NE", "NG", "SH", "SL", "SN",
        "TG",
    )),
    ("013", "Central America", (
        "BZ", "CR", "GT", "HN", "MX", "NI", "PA", "SV",
    )),
    ("014", "Eastern Africa", (
        "BI", "DJ", "ER", "ET", "IO", "KE", "KM", "MG", "MU", "MW", "MZ", "RE", "RW", "SC", "SO", "SS",
        "TZ", "UG", "YT", "ZM", "ZW",
    )),
    ("015", "Northern Africa", (
        "DZ", "EG", "EH", "LY", "MA", "SD", "TN",
    )),
    ("017", "Middle Africa", (
        "AO", "CD", "CF", "CG", "CM", "GA", "GQ", "ST", "TD",
    )),
    ("018", "Southern Africa", (
        "BW", "LS", "NA", "SZ", "ZA",
    )),
    ("021", "Northern America", (
        "BM", "CA", "GL", "PM", "US",
    )),
    ("029", "Caribbean", (
        "AG", "AI", "AW", "BB", "BL", "BQ", "BS", "CU", "CW", "DM", "DO", "GD", "GP", "HT", "JM", "KN",
        "KY", "LC", "MF", "MQ", "MS", "PR", "SX", "TC", "TT", "VC", "VG", "VI",
    )),
    ("030", "Eastern Asia", (
        "CN", "HK", "JP", "KP", "KR", "MN", "MO", "TW",
    )),
    ("034", "Southern Asia", (
        "AF", "BD", "BT", "IN", "IR", "LK", "MV", "NP", "PK",
    )),
    ("035", "South-eastern Asia", (
        "BN", "ID", "KH", "LA", "MM", "MY", "PH", "SG", "TH", "TL", "VN",
    )),
    ("039", "Southern Europe", (
        "AD", "AL", "BA", "ES", "GI", "GR", "HR", "IT", "ME", "MK", "MT", "PT", "RS", "SI", "SM", "VA",
    )),
    ("053", "Australia and New Zealand", (
        "AU", "CC", "CX", "NF", "NZ",
    )),
    ("054", "Melanesia", (
        "FJ", "NC", "PG", "SB", "VU",
    )),
    ("057", "Micronesia", (
        "FM", "GU", "KI", "MH", "MP", "NR", "PW",
    )),
    ("061", "Polynesia", (
        "AS", "CK", "NU", "PF", "PN", "TK", "TO", "TV", "WF", "WS",
    )),
    ("143", "Central Asia", (
        "KG", "KZ", "TJ", "TM", "UZ",
    )),
    ("145", "Western Asia", (
        "AE", "AM", "AZ", "BH", "CY", "GE", "IL", "IQ", "JO", "KW", "LB", "OM", "PS", "QA", "SA", "SY",
        "TR", "YE",
    )),
    ("151", "Eastern Europe", (
        "BG", "BY", "CZ", "HU", "MD", "PL", "RO", "RU", "SK", "UA",
    )),
    ("154", "Northern Europe", (
        "AX", "DK", "EE", "FI", "FO", "GB", "GG", "IE", "IM", "IS", "JE", "LT", "LV", "NO", "SE", "SJ",
    )),
    ("155", "Western Europe", (
        "AT", "BE", "CH", "DE", "FR", "LI", "LU", "MC", "NL",
    )),
)
"""(M49 code, name, country codes), by M49 code."""

REGION_NAMES: Final[dict[str, str]] = {code: name for code, name, _ in M49_REGIONS}
"""M49 code -> sub-region name."""

REGION_OF: Final[dict[str, str]] = {country: code for code, _, countries in M49_REGIONS for country in countries}
"""Country code -> the M49 code of its sub-region (every code of the domain but `ZZ`)."""


def region_of(country: str) -> str | None:
    """The M49 sub-region code of a country of the domain; None for `ZZ` (unknown), which only the world holds."""
    if country == UNKNOWN_COUNTRY:
        return None
    return REGION_OF[country]

