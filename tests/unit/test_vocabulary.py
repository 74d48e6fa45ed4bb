"""bridge.vocabulary: the standard point names and what a point of that name must be."""

from __future__ import annotations

from bridge import hass, vocabulary


def test_a_standard_name_must_carry_its_unit_and_classes() -> None:
    assert vocabulary.check_point("power", "W", "power", "measurement") == []
    assert vocabulary.check_point("power", "kW", "power", "measurement") == [
        "power: unit 'kW', the vocabulary says 'W'"
    ]
    assert vocabulary.check_point("import_energy", "kWh", "energy", "measurement") == [
        "import_energy: state_class 'measurement', the vocabulary says 'total_increasing'"
    ]
    assert vocabulary.check_point("soc", "%", None, "measurement") == [
        "soc: device_class None, the vocabulary says 'battery'"
    ]


def test_other_names_are_free_but_lower_case_words() -> None:
    assert vocabulary.check_point("phase_angle_l1", "°", None, "measurement") == []
    assert vocabulary.check_point("Phase-Angle", None, None, None) == [
        "'Phase-Angle': not lower-case words joined by '_'"
    ]


def test_names_are_unique_and_home_assistant_takes_every_term() -> None:
    names = [t.name for t in vocabulary.TERMS]
    assert len(names) == len(set(names))
    for t in vocabulary.TERMS:
        assert set(t.kinds) <= set(vocabulary.KINDS), t.name
        if t.device_class is not None:
            assert t.device_class in hass.SENSOR_DEVICE_CLASSES, t.name
            assert t.unit in hass.UNITS[t.device_class], t.name
            assert t.state_class in hass.STATE_CLASSES[t.device_class], t.name


def test_the_meter_and_battery_signs_are_written_down() -> None:
    assert "positive = import" in vocabulary.BY_NAME["power"].meaning
    assert "positive = charging" in vocabulary.BY_NAME["battery_power"].meaning
