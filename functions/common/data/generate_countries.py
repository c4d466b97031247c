#!/usr/bin/env python3
"""Writes countries.tsv, the closed list of countries that `pais` resolves against.

Sources (both well kept, both offline once installed):
- ISO 3166-1 itself, its 249 codes (alpha-2, alpha-3, numeric) and ISO's English names: Debian's
  `iso-codes` package (`/usr/share/iso-codes/json/iso_3166-1.json`), which follows ISO's Online
  Browsing Platform.
- The display names, from Unicode CLDR: the npm package `cldr-localenames-full`
  (`main/<locale>/territories.json`): `es` gives the canonical Spanish short name, `en` the
  English one; `es-419` (Latin American Spanish) and CLDR's `-alt-short` / `-alt-variant` forms
  are extra spellings.

Regenerate (from the repository root):

    npm install --prefix /tmp/cldr cldr-localenames-full@48.2.0
    apt-get install iso-codes
    python3 functions/common/data/generate_countries.py \
        /tmp/cldr/node_modules/cldr-localenames-full /usr/share/iso-codes/json/iso_3166-1.json \
        > functions/common/data/countries.tsv

How a spelling is matched (NFKC, case folding, accents and punctuation dropped) and which
spelling wins when two fold alike is decided in Rust (`common::country`) and checked by its tests;
this script only gathers the names. Standard library only.
"""

import json
import sys
from pathlib import Path

# A few spellings CLDR does not carry but people write; each is a name in common use for exactly
# one ISO 3166-1 country.
EXTRA_ALIASES = {
    "GB": ["Gran Bretaña", "Great Britain"],
    "NL": ["Holanda", "Holland"],
    "US": ["Estados Unidos de América"],
    "VA": ["Vaticano", "Vatican"],
    "MM": ["Birmania", "Burma"],
}


def territories(cldr: Path, locale: str) -> dict[str, str]:
    data = json.loads((cldr / "main" / locale / "territories.json").read_text(encoding="utf-8"))
    return data["main"][locale]["localeDisplayNames"]["territories"]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} CLDR_LOCALENAMES_DIR ISO_3166-1_JSON")
    cldr, iso_path = Path(sys.argv[1]), Path(sys.argv[2])
    cldr_version = json.loads((cldr / "package.json").read_text(encoding="utf-8"))["version"]
    iso = json.loads(iso_path.read_text(encoding="utf-8"))["3166-1"]
    es, es419, en = territories(cldr, "es"), territories(cldr, "es-419"), territories(cldr, "en")

    rows = []
    for entry in sorted(iso, key=lambda e: e["alpha_2"]):
        a2, a3, numeric = entry["alpha_2"], entry["alpha_3"], entry["numeric"]
        assert len(a2) == 2 and a2.isascii() and a2.isupper(), entry
        assert len(a3) == 3 and a3.isascii() and a3.isupper(), entry
        assert len(numeric) == 3 and numeric.isascii() and numeric.isdigit(), entry
        if a2 not in es or a2 not in en:
            sys.exit(f"CLDR {cldr_version} has no Spanish or English name for {a2}")
        aliases = []
        for names in (es, es419, en):
            aliases += [v for k, v in names.items() if k == a2 or k.startswith(f"{a2}-alt-")]
        aliases += [entry[k] for k in ("name", "common_name", "official_name") if k in entry]
        aliases += EXTRA_ALIASES.get(a2, [])
        unique = []
        for alias in aliases:
            if alias not in (es[a2], en[a2]) and alias not in unique:
                unique.append(alias)
        row = [a2, a3, numeric, es[a2], en[a2], "|".join(unique)]
        assert not any(c in field for field in row for c in "\t\n"), row
        assert not any("|" in name for name in unique), row
        rows.append("\t".join(row))
    if len(rows) != 249:
        sys.exit(f"expected the 249 codes of ISO 3166-1, got {len(rows)}")

    out = sys.stdout
    out.write(
        "# The countries of ISO 3166-1, one per line, for `pais`. GENERATED — do not edit by hand.\n"
        f"# Codes and ISO's English names: Debian iso-codes ({iso_path.name}); display names: Unicode\n"
        f"# CLDR {cldr_version} (npm cldr-localenames-full, locales es, es-419, en), plus a few\n"
        "# aliases listed in the generator. Regenerate: see functions/common/data/generate_countries.py.\n"
        "# Columns: alpha-2, alpha-3, numeric, Spanish short name (CLDR es), English short name\n"
        "# (CLDR en), other spellings separated by |.\n"
    )
    out.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
