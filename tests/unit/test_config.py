from pathlib import Path

import pytest

from nvrd import config, daemon

REPO = Path(__file__).resolve().parents[2]


def run_main(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "nvrd.toml"
    path.write_text(text)
    code = daemon.main(["--config", str(path)])
    return code, capsys.readouterr().err


def test_shipped_config_is_valid() -> None:
    shipped = config.load(REPO / "etc/nvrd/nvrd.toml")
    assert shipped.daemon.state_dir == Path("/var/lib/nvrd")
    assert shipped.storage.mode == "managed"
    assert shipped.storage.disks == []  # a fresh install touches no disk
    assert (shipped.http.http_port, shipped.http.https_port) == (80, 443)


def test_dev_template_is_valid() -> None:
    text = (REPO / "etc/nvrd/dev.toml.in").read_text().replace("@TOP@", "/tmp/x")
    dev = config.parse(text)
    assert dev.http.listen == "127.0.0.1"
    assert (dev.http.http_port, dev.http.https_port) == (8080, 8443)
    assert dev.storage.mode == "directory"


def test_broken_toml_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    code, err = run_main(tmp_path, "[http]\nhttp_port = = 80\n", capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "nvrd.toml" in err and "not valid TOML" in err and "line 2" in err


def test_wrong_type_names_the_key(tmp_path, capsys) -> None:
    code, err = run_main(tmp_path, '[http]\nhttp_port = "80"\n', capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "http.http_port" in err and "'80'" in err
    assert "Traceback" not in err


def test_unknown_key_names_the_key(tmp_path, capsys) -> None:
    code, err = run_main(tmp_path, "[http]\nhttps_prot = 443\n", capsys)
    assert code == 2
    assert err.strip().endswith("http.https_prot: unknown key")
    assert err.count("\n") == 1


def test_unknown_section(tmp_path, capsys) -> None:
    code, err = run_main(tmp_path, "[recorder]\nx = 1\n", capsys)
    assert code == 2 and "recorder: unknown key" in err


def test_missing_file(tmp_path, capsys) -> None:
    code = daemon.main(["--config", str(tmp_path / "absent.toml")])
    err = capsys.readouterr().err
    assert code == 2 and "absent.toml: cannot read" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[http]\nhttp_port = 70000", "http.http_port"),
        ("[http]\nhttps_port = -1", "http.https_port"),
        ('[http]\nlisten = "localhost:80"', "http.listen"),
        ('[storage]\nmode = "raid"', "storage.mode"),
        ('[storage]\ndisks = ["sda"]', "storage.disks"),
        ('[log]\nlevel = "verbose"', "log.level"),
        ('[log.levels]\n"nvrd.api" = "loud"', "log.levels.nvrd.api"),
        ("[daemon]\nstate_dir = 3", "daemon.state_dir"),
        ('[indicators]\nbackend = "gpio"', "indicators.backend"),
        ('[indicators.slots.one]\ngreen = "x"', "indicators.slots"),
        ('[indicators.slots.1]\nblue = "x"', "indicators.slots.1.blue"),
        ('[indicators]\nbuzzer = "yes"', "indicators.buzzer"),
        ("[health]\nsmart_interval_minutes = 0", "health.smart_interval_minutes"),
        ('[health]\nsmart_interval_minutes = "10"', "health.smart_interval_minutes"),
        ("[health]\ntemperature_limit_c = 55.5", "health.temperature_limit_c"),
        ("[health]\ntemperature_hysteresis_c = -1", "health.temperature_hysteresis_c"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text, "f.toml")
    message = str(caught.value)
    assert message.startswith(f"f.toml: {key}: ")
    assert "\n" not in message


def test_several_errors_are_counted() -> None:
    with pytest.raises(config.ConfigError, match=r"\(and 1 more\)"):
        config.parse("[http]\nhttp_port = 'a'\nhttps_port = 'b'\n")


def test_port_zero_disables() -> None:
    parsed = config.parse("[http]\nhttp_port = 0\n")
    assert parsed.http.http_port == 0


def test_usb_export_disks_must_be_under_dev() -> None:
    assert config.parse("[exports]\nusb = false\n").exports.usb is False
    assert config.parse("").exports.usb_disks == ["/dev/disk/by-id/usb-*"]
    with pytest.raises(config.ConfigError, match="exports.usb_disks"):
        config.parse('[exports]\nusb_disks = ["sd*"]\n')


def test_indicator_and_health_defaults() -> None:
    parsed = config.parse("")
    assert parsed.indicators.backend == "none" and parsed.indicators.buzzer is True
    assert parsed.indicators.slots == {}
    assert parsed.health.smart_interval_minutes == 10
    assert (parsed.health.temperature_limit_c, parsed.health.temperature_hysteresis_c) == (60, 5)


def test_led_map() -> None:
    parsed = config.parse(
        '[indicators]\nbackend = "sysfs-leds"\n'
        '[indicators.slots.1]\ngreen = "bay1:green"\nred = "bay1:red"\n'
        '[indicators.product]\namber = "power:amber"\n'
        "[health]\nsmart_interval_minutes = 0.5\n"
    )
    assert parsed.indicators.slots["1"].by_colour() == {"green": "bay1:green", "red": "bay1:red"}
    assert parsed.indicators.product.by_colour() == {"amber": "power:amber"}
    assert parsed.health.smart_interval_minutes == 0.5
