"""End to end on local disk: the CLI on a synthetic PHI-laden archive built from real DICOM files,
run in a subprocess with its own Prefect home (embedded server), then the output inspected."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from medanon.keys import Pseudonymizer
from medanon.samples import build_sample_archive
from conftest import TEST_KEY, exported_pairs, phi_needles, run_cli, run_json, source_instances


def _tree_bytes_contain(root: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    hits: dict[bytes, list[str]] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            data = Path(p).read_bytes()
            for n in needles:
                if n in data or n in p.encode():
                    hits.setdefault(n, []).append(p)
    return hits


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "archive"
    info = build_sample_archive(root)
    return root, info


def test_end_to_end_no_phi_pixels_hierarchy_references(archive, tmp_path, cli_env):
    src, info = archive
    out = tmp_path / "out"
    summary = run_json(["run", str(src), str(out), "--state-dir", str(tmp_path / "state"), "--layout", "series",
                        "--label", "e2e"], cli_env)
    for k in ("discovered", "dicom", "exported", "skipped_existing", "quarantined", "bytes_out"):
        assert k in summary
    q = summary["quarantined"]
    assert q.get("not-dicom") == 1 and q.get("empty-file") == 1 and q.get("truncated") == 1
    assert q.get("dicomdir") == 1 and q.get("burned-in-annotation", 0) >= 1
    assert q.get("repeated-element") == 1  # two Patient IDs in one file
    assert summary["exported"] >= 15 and summary["bytes_out"] > 0

    sources = source_instances(src)
    pseudo = Pseudonymizer(TEST_KEY.encode())
    outputs = {}
    for dirpath, _, files in os.walk(out):
        for f in files:
            if f.endswith(".dcm"):
                ds = pydicom.dcmread(os.path.join(dirpath, f))
                outputs[str(ds.SOPInstanceUID)] = (Path(dirpath, f), ds)
    assert len(outputs) == summary["exported"]

    # 1. no planted PHI string or original UID anywhere in output bytes or paths, nor in Prefect's home
    needles = phi_needles(sources)
    assert _tree_bytes_contain(out, needles) == {}
    assert _tree_bytes_contain(Path(cli_env["PREFECT_HOME"]), needles) == {}

    # 2. pixel data bit-exact; transfer syntax kept; hierarchy one-to-one
    study_map, series_map = {}, {}
    for ds, path, new in exported_pairs(sources, outputs, pseudo):
        study_map.setdefault(str(ds.StudyInstanceUID), set()).add(str(new.StudyInstanceUID))
        series_map.setdefault(str(ds.SeriesInstanceUID), set()).add(str(new.SeriesInstanceUID))
        # series layout: <patient>/<study>/<series>/<instance>.dcm, names only from pseudonyms
        rel = path.relative_to(out).parts
        assert len(rel) == 4 and rel[0] == str(new.PatientID)
    assert all(len(v) == 1 for v in study_map.values()) and all(len(v) == 1 for v in series_map.values())
    new_studies = [next(iter(v)) for v in study_map.values()]
    assert len(set(new_studies)) == len(new_studies)  # one-to-one
    # same patient -> same pseudonym and same folder for every study of that patient
    by_patient = {}
    for _, new in outputs.values():
        by_patient.setdefault(str(new.PatientID), set()).add(str(new.PatientName))
    assert all(len(names) == 1 for names in by_patient.values())
    assert len(by_patient) == 3

    # 3. every reference between instances resolves to an exported instance
    refs = 0
    for _, new in outputs.values():
        for item in new.get("ReferencedImageSequence", []):
            assert str(item.ReferencedSOPInstanceUID) in outputs
            refs += 1
    assert refs > 0

    # 4. the PHI-free manifest lists exactly the exported files (instances, then reports beside their studies)
    manifest = (out / "manifest.csv").read_text().splitlines()
    reports = {p.relative_to(out).as_posix() for p in out.rglob("*_report*")}
    assert len(reports) == summary["reports_exported"] == 4
    assert len(manifest) == len(outputs) + len(reports) + 1
    assert {line.split(",")[0] for line in manifest[1:]} == {
        p.relative_to(out).as_posix() for p, _ in outputs.values()} | reports


def test_same_key_same_pseudonyms_other_key_unrelated(archive, tmp_path, cli_env):
    src, _ = archive

    def files(out):
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.dcm")}

    run_json(["run", str(src), str(tmp_path / "a"), "--state-dir", str(tmp_path / "sa")], cli_env)
    run_json(["run", str(src), str(tmp_path / "b"), "--state-dir", str(tmp_path / "sb")], cli_env)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert a and a == b  # same names and identical bytes from two independent state dirs
    other = dict(cli_env, MEDANON_KEY="a-completely-different-key")
    run_json(["run", str(src), str(tmp_path / "c"), "--state-dir", str(tmp_path / "sc")], other)
    c = files(tmp_path / "c")
    assert len(c) == len(a)
    parts_a = {part for name in a for part in name.replace(".dcm", "").split("/")}
    parts_c = {part for name in c for part in name.replace(".dcm", "").split("/")}
    assert parts_a.isdisjoint(parts_c)
    uids_a = {str(pydicom.dcmread(tmp_path / "a" / n).StudyInstanceUID) for n in a}
    uids_c = {str(pydicom.dcmread(tmp_path / "c" / n).StudyInstanceUID) for n in c}
    assert uids_a.isdisjoint(uids_c)


def test_generated_key_is_private_and_state_store_0600(archive, tmp_path, cli_env):
    src, _ = archive
    env = {k: v for k, v in cli_env.items() if k != "MEDANON_KEY"}
    state = tmp_path / "state"
    run_json(["run", str(src), str(tmp_path / "out"), "--state-dir", str(state), "--layout", "flat"], env)
    assert (state / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (state / "medanon.sqlite").stat().st_mode & 0o777 == 0o600
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())  # flat layout
    # the same key from a key file, with another state dir, gives the same names
    key_file = tmp_path / "key.txt"
    key_file.write_text((state / "secret.key").read_text())
    run_json(["run", str(src), str(tmp_path / "out2"), "--state-dir", str(tmp_path / "state2"), "--layout", "flat",
              "--key-file", str(key_file)], env)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in (tmp_path / "out2").iterdir())


def test_bad_invocations_exit_nonzero_with_one_line(tmp_path, cli_env):
    proc = run_cli(["run", str(tmp_path / "missing"), str(tmp_path / "out")], cli_env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "source folder not found" in proc.stderr
    src = tmp_path / "src"
    src.mkdir()
    proc = run_cli(["run", str(src), str(tmp_path / "out"), "--layout", "nonsense"], cli_env, check=False)
    assert proc.returncode == 2
    proc = run_cli(["run", str(src), str(tmp_path / "out"), "--state-dir", str(tmp_path / "out" / "s")], cli_env,
                   check=False)
    assert proc.returncode == 2 and "state dir" in proc.stderr


def test_a_key_file_that_is_not_text_stops_the_run_without_its_bytes(archive, tmp_path, cli_env):
    """Raw random bytes as a key file: exit 2 with a reason, and the bytes reach neither the
    console nor Prefect's logs and database."""
    src, _ = archive
    env = {k: v for k, v in cli_env.items() if k != "MEDANON_KEY"}
    key_file = tmp_path / "key.bin"
    key_file.write_bytes(b"KEYMARK-\xff\xfe\x00" + bytes(range(128, 200)))
    proc = run_cli(["run", str(src), str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"),
                    "--key-file", str(key_file)], env, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == ("medanon: error: the key file is not text: write the key as "
                                                    "UTF-8 text (e.g. base64 or hex)")
    assert "KEYMARK" not in proc.stdout + proc.stderr
    for path in Path(env["PREFECT_HOME"]).rglob("*"):
        if path.is_file():
            assert b"KEYMARK" not in path.read_bytes(), path.name


def test_allow_burned_in_exports_guarded_instances(archive, tmp_path, cli_env):
    src, _ = archive
    state = str(tmp_path / "state")
    first = run_json(["run", str(src), str(tmp_path / "out"), "--state-dir", state], cli_env)
    held = first["quarantined"]["burned-in-annotation"]
    second = run_json(["run", str(src), str(tmp_path / "out"), "--state-dir", state, "--allow-burned-in"], cli_env)
    assert second["exported"] == held
    assert "burned-in-annotation" not in second["quarantined"]



def test_recognizable_visual_features_are_held_until_allowed(tmp_path, cli_env):
    """An instance whose Recognizable Visual Features is YES is quarantined with its reason; a
    later run with --allow-recognizable-features exports it (and only it)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = tmp_path / "src"
    src.mkdir()
    for i, face in enumerate(("NO", "YES", None)):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(i)])
        ds.BurnedInAnnotation = "NO"
        if face:
            ds.add_new(0x00280302, "CS", face)
        ds.save_as(src / f"ct{i}.dcm")
    state, out = str(tmp_path / "state"), str(tmp_path / "out")
    first = run_json(["run", str(src), out, "--state-dir", state], cli_env)
    assert first["exported"] == 2 and first["quarantined"] == {"recognizable-visual-features": 1}
    second = run_json(["run", str(src), out, "--state-dir", state, "--allow-recognizable-features"], cli_env)
    assert second["exported"] == 1 and not second["quarantined"]
    faces = [pydicom.dcmread(p) for p in Path(out).rglob("*.dcm")]
    assert sorted(str(d.get("RecognizableVisualFeatures", "")) for d in faces) == ["", "NO", "YES"]
