from pathlib import Path

from nvrd.bus import Bus
from nvrd.storage.volume import DirectoryVolume, VolumeState


async def test_directory_volume_is_made_and_ready(tmp_path: Path) -> None:
    bus = Bus()
    sub = bus.subscribe(["volume"])
    volume = DirectoryVolume(tmp_path / "a" / "volume", bus)
    await volume.start()
    assert volume.status.state is VolumeState.READY and volume.status.writable
    assert (tmp_path / "a" / "volume").is_dir()
    event = await sub.get()
    assert event.data["state"] == "ready" and event.data["writable"] is True


async def test_unwritable_directory_is_unavailable_with_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    volume = DirectoryVolume(blocker / "volume", Bus())
    await volume.start()
    assert volume.status.state is VolumeState.UNAVAILABLE
    assert volume.status.reason and "file" in volume.status.reason
    assert not volume.status.writable
