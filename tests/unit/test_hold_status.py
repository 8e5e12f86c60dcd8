"""The capacity holder's status file as a reader may find it: the holder renames a whole file into place,
but a reader must still take an empty or cut-short one as "not said yet", never crash (CI saw an IndexError
when the holder wrote the file in place and a read fell between the truncation and the write)."""

from harness import container_faults as cf


def test_a_status_file_read_empty_or_cut_short_is_not_said_yet():
    assert cf.hold_status(0, b"") is None
    assert cf.hold_status(0, b"4711") is None
    assert cf.hold_status(0, b"4711 12\n") == 12


def test_the_holder_writes_its_files_whole():
    script = cf.hold_capacity_script(port=3478, limit=5)
    assert 'open("' + cf.HOLD_PATH + '", "w")' not in script
    assert "os.replace(" in script
