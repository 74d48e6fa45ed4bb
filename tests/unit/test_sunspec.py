"""SunSpec discovery and mapping on register images built from pysunspec2's definitions
and encoders (tests/sunspec_image.py): the chain walk, every point decoded through
the planned blocks, names, aliases, writes with a scale factor."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bridge import sunspec
from bridge.codec import encode_point
from bridge.config_rules import check_homeassistant
from bridge.model import DataType, Device, Point, StateClass
from bridge.planner import decode_block, plan_device
from tests.sunspec_image import PROOF_MODELS, SF, Layout, build_image, definition


def _chain(layout: Layout) -> sunspec.Chain:
    chain = sunspec.read_image(sunspec.find_chain(), layout.image)
    assert chain is not None
    return chain


def _device(points: tuple[Point, ...]) -> Device:
    return Device(name="inv", host="h", unit=1, interval=1.0, points=points)


def _poll(device: Device, image: dict[int, int]) -> dict[str, Any]:
    """Every block of the plan read from the image and decoded, as the scheduler does."""
    values: dict[str, Any] = {}
    scales: dict[str, Any] = {}
    for block in plan_device(device):
        data = [image.get(a, 0) for a in range(block.start, block.end)]
        values.update(decode_block(block, data, scales))
    return values


def _expected(model: int, path: str, raw: Any, layout: Layout, n: int = 1) -> Any:
    """What pysunspec2 makes of a raw value: None when not implemented, its sf applied."""
    if raw is None:
        return None
    pdef = _pdef(model, path)
    if pdef["type"].startswith("enum"):
        labels = {s["value"]: s["name"] for s in pdef.get("symbols", [])}
        return labels.get(raw, raw)
    sf_name = pdef.get("sf")
    if isinstance(sf_name, str):
        sf = SF.get((model, sf_name), -1)
        return round(raw * math.pow(10, sf), -sf)
    return raw


def _pdef(model: int, path: str) -> dict[str, Any]:
    parts = [p for p in path.split(".") if not p.isdigit()]
    group = definition(model)["group"]
    for g in parts[:-1]:
        group = next(s for s in group["groups"] if s["name"] == g)
    return next(p for p in group["points"] if p["name"] == parts[-1])


_PREFIX = {1: "common", 103: "inverter_three_phase", 160: "mppt", 203: "ac_meter_abcn",
           802: "battery"}  # fmt: skip


def _our_name(model: int, path: str) -> str:
    parts = path.split(".")
    out = [_PREFIX[model]]
    for part in parts:
        out.append(part)
    return "_".join(out)


@pytest.mark.parametrize("base", [40000, 40001, 50000, 50001, 0, 1])
def test_the_marker_is_found_where_the_specification_allows(base: int) -> None:
    layout = build_image(PROOF_MODELS, base=base)
    chain = _chain(layout)
    assert chain.base == base
    assert [m.id for m in chain.models] == [1, 103, 160, 203, 802]
    assert sunspec.image_of(chain) == layout.image


def test_no_marker_no_chain() -> None:
    image = dict.fromkeys(range(40000, 40010), 0)
    assert sunspec.read_image(sunspec.find_chain(), image) is None


def test_a_chain_without_end_marker_ends_where_reads_are_refused() -> None:
    layout = build_image([(1, {}), (103, {})])
    image = dict(layout.image)
    end = max(image)
    del image[end], image[end - 1]  # no 0xFFFF: the read of the next header is refused
    chain = _chain(Layout(image=image))
    assert [m.id for m in chain.models] == [1, 103]


def test_every_point_decodes_as_pysunspec2_defines_it() -> None:
    layout = build_image(PROOF_MODELS)
    chain = _chain(layout)
    points = sunspec.map_chain(chain, interval=1.0)
    values = _poll(_device(points), layout.image)
    checked = 0
    for (model, n, path), raw in layout.values.items():
        name = _our_name(model, path)
        pdef = _pdef(model, path)
        if pdef["type"] in ("pad", "ipv6addr"):
            continue
        assert name in values, name
        want = _expected(model, path, raw, layout, n)
        assert values[name] == want, (name, raw, values[name], want)
        checked += 1
    assert checked > 200  # every point of the five models, two MPPT modules


def test_not_implemented_values_publish_null() -> None:
    layout = build_image(PROOF_MODELS)
    values = _poll(_device(sunspec.map_chain(_chain(layout), interval=1.0)), layout.image)
    for name in (
        "common_Opt",
        "inverter_three_phase_PPVphAB",
        "inverter_three_phase_TmpSnk",
        "inverter_three_phase_VA",
        "apparent_power",  # VA's standard name
        "mppt_module_1_Tmp",
        "mppt_module_2_Tmp",
        "ac_meter_abcn_TotVAhExp",
        "ac_meter_abcn_WphC",
        "power_l3",
        "battery_NCyc",
        "battery_StateVnd",
    ):
        assert values[name] is None, name
    assert values["inverter_three_phase_PPVphBC"] is not None


def _point_paths(group: dict[str, Any], prefix: str = "") -> list[str]:
    """Every point of a definition's group as a dotted path (module.DCV)."""
    paths = [prefix + p["name"] for p in group["points"]]
    for sub in group.get("groups", []):
        paths += _point_paths(sub, f"{prefix}{sub['name']}.")
    return paths


def test_every_type_not_implemented_publishes_null() -> None:
    """Every model pysunspec2 knows, every point holding its type's "not implemented"
    value as pysunspec2 encodes it: each publishes null (the group counts excepted,
    which the image fills so that the groups exist)."""
    import json
    from importlib import resources

    folder = resources.files("sunspec2") / "models" / "json"
    ids = sorted(int(f.name[6:-5]) for f in folder.iterdir() if f.name.startswith("model_"))
    published: dict[int, list[str]] = {}
    for model_id in ids:
        doc = json.loads((folder / f"model_{model_id}.json").read_text())
        paths = frozenset((model_id, path) for path in _point_paths(doc["group"]))
        groups = doc["group"].get("groups", [])
        counts = {g["name"]: 1 for g in groups}
        count_points = {g["count"] for g in groups if isinstance(g.get("count"), str)}
        layout = build_image([(1, {}), (model_id, counts)], unimplemented=paths)
        points = sunspec.map_chain(_chain(layout), interval=1.0)
        values = _poll(_device(points), layout.image)
        shown = [
            p.name
            for p in points
            if not p.name.startswith("common_")
            and values.get(p.name) is not None
            and not any(p.name.endswith(f"_{c}") for c in count_points)
        ]
        if shown:
            published[model_id] = shown
    assert published == {}


def test_standard_names_carry_the_vocabulary_units() -> None:
    layout = build_image(PROOF_MODELS)
    points = {p.name: p for p in sunspec.map_chain(_chain(layout), interval=1.0)}
    values = _poll(_device(tuple(points.values())), layout.image)
    assert values["ac_power"] == values["inverter_three_phase_W"]
    assert values["power"] == values["ac_meter_abcn_W"]
    assert values["soc"] == values["battery_SoC"]
    assert values["pv2_voltage"] == values["mppt_module_2_DCV"]
    assert values["energy_total"] == pytest.approx(values["inverter_three_phase_WH"] / 1000)
    assert values["import_energy"] == pytest.approx(values["ac_meter_abcn_TotWhImp"] / 1000)
    e = points["energy_total"]
    assert (e.unit, e.device_class, e.state_class) == ("kWh", "energy", StateClass.TOTAL_INCREASING)
    # Home Assistant gets one entity per quantity: the standard one
    assert not points["inverter_three_phase_W"].homeassistant
    assert points["inverter_three_phase_PPVphBC"].homeassistant
    assert points["battery_voltage"].homeassistant and not points["battery_V"].homeassistant


def test_a_standard_name_goes_to_the_first_model_that_has_it() -> None:
    layout = build_image(PROOF_MODELS)
    points = {p.name: p for p in sunspec.map_chain(_chain(layout), interval=1.0)}
    # the inverter (103) comes first: its frequency, not the meter's
    assert points["frequency"].address == points["inverter_three_phase_Hz"].address
    assert points["ac_meter_abcn_Hz"].homeassistant  # the meter's own stays shown
    assert "frequency_2" not in points


def test_repeating_groups_one_set_per_module() -> None:
    layout = build_image([(1, {}), (160, {"module": 3})])
    points = sunspec.map_chain(_chain(layout), interval=1.0)
    names = {p.name for p in points}
    for i in (1, 2, 3):
        assert {f"mppt_module_{i}_DCV", f"mppt_module_{i}_IDStr", f"pv{i}_power"} <= names
    assert "mppt_module_4_DCV" not in names
    dcv = next(p for p in points if p.name == "mppt_module_3_DCV")
    assert dcv.scale_factor == "mppt_DCV_SF"
    assert dcv.address == layout.addresses[160, 1, "module.3.DCV"]


def test_two_instances_of_a_model_are_numbered() -> None:
    layout = build_image([(1, {}), (203, {}), (203, {})])
    points = sunspec.map_chain(_chain(layout), interval=1.0)
    names = {p.name for p in points}
    assert {"ac_meter_abcn_1_W", "ac_meter_abcn_2_W", "power", "power_2"} <= names
    values = _poll(_device(points), layout.image)
    assert values["power_2"] == values["ac_meter_abcn_2_W"]
    assert values["ac_meter_abcn_2_W"] == _expected(203, "W", layout.values[203, 2, "W"], layout)


def test_an_unknown_model_is_published_raw() -> None:
    layout = build_image([(1, {}), (64999, {}), (103, {})])
    chain = _chain(layout)
    assert [m.id for m in chain.models] == [1, 64999, 103]
    mapped = sunspec.map_models(chain, interval=1.0)
    unknown = mapped[1]
    assert not unknown.known
    assert [p.name for p in unknown.points] == [f"model_64999_r{i}" for i in range(4)]
    values = _poll(_device(sunspec.map_chain(chain, interval=1.0)), layout.image)
    assert values["model_64999_r0"] == layout.image[unknown.model.address + 2]
    assert values["ac_power"] is not None  # the models after it are still mapped


def test_model_1_fills_the_device_card() -> None:
    info = sunspec.device_info(_chain(build_image(PROOF_MODELS)))
    assert info == sunspec.DeviceInfo("SunSpecTest", "Hybrid-10K", "SN0042-7", "4.2.1")


def test_read_write_points_are_writable_with_their_scale_factor() -> None:
    layout = build_image(PROOF_MODELS)
    points = {p.name: p for p in sunspec.map_chain(_chain(layout), interval=1.0)}
    reserve = points["battery_SoCRsvMin"]
    assert reserve.writable and reserve.scale_factor == "battery_SoC_SF"
    assert encode_point(reserve, 12.5, sf=-1) == [125]
    assert points["battery_SetOp"].writable
    assert not points["battery_SoC"].writable
    assert not points["soc"].writable
    assert not points["ac_power"].writable
    assert points["common_Mn"].type is DataType.STRING and not points["common_Mn"].writable


def test_a_shorter_model_drops_the_points_past_its_length() -> None:
    layout = build_image([(1, {}), (103, {})])
    chain = _chain(layout)
    inverter = chain.models[1]
    short = sunspec.Model(inverter.id, inverter.address, 20, inverter.body[:20])
    points = sunspec.map_chain(sunspec.Chain(chain.base, (chain.models[0], short)), interval=1.0)
    assert all(p.end <= short.end for p in points if p.name.startswith("inverter"))
    assert "inverter_three_phase_W" in {p.name for p in points}


def test_blocks_stay_within_one_read() -> None:
    layout = build_image(PROOF_MODELS)
    blocks = plan_device(_device(sunspec.map_chain(_chain(layout), interval=1.0)))
    assert all(b.count <= 125 for b in blocks)
    assert len(blocks) <= 6


def test_every_shipped_definition_maps_without_error() -> None:
    """Any model pysunspec2 knows, one instance of each repeating group: never fatal."""
    import json
    from importlib import resources

    folder = resources.files("sunspec2") / "models" / "json"
    ids = sorted(int(f.name[6:-5]) for f in folder.iterdir() if f.name.startswith("model_"))
    assert len(ids) > 100
    for model_id in ids:
        doc = json.loads((folder / f"model_{model_id}.json").read_text())
        counts = {g["name"]: 1 for g in doc["group"].get("groups", [])}
        layout = build_image([(1, {}), (model_id, counts)], unimplemented=frozenset())
        points = sunspec.map_chain(_chain(layout), interval=1.0)
        _poll(_device(points), layout.image)
        assert len({p.name for p in points}) == len(points), model_id
        # what Home Assistant discovery is told fits the entity each point becomes
        assert not [(p.name, f) for p in points for f in check_homeassistant(p)], model_id


def test_every_standard_name_is_in_the_vocabulary() -> None:
    from bridge import vocabulary

    for alias in sunspec.ALIASES:
        for i in range(1, sunspec.PV_STRINGS + 1) if "{i}" in alias.name else (1,):
            assert vocabulary.term(alias.name.format(i=i)) is not None, alias


def test_describe_lists_the_chain_and_what_it_maps_to() -> None:
    layout = build_image([(1, {}), (802, {}), (64999, {})])
    models = sunspec.describe(_chain(layout))
    assert [(m["id"], m["name"], m["known"]) for m in models] == [
        (1, "common", True),
        (802, "battery", True),
        (64999, "model_64999", False),
    ]
    assert models[1]["address"] == layout.addresses[802, 1, "AHRtg"] - 2
    assert models[1]["standard"] == ["soc", "battery_voltage"]
    assert "battery_V" in models[1]["points"]


def test_sunspec_true_needs_no_points_and_chains_fill_them() -> None:
    from bridge.config import parse_config

    text = """\
version: 1
hosts:
  - {name: gw, address: 10.0.0.1}
devices:
  - {name: inv, host: gw, unit: 126, sunspec: true}
  - name: meter
    host: gw
    unit: 2
    sunspec: true
    manufacturer: Mine
    points: [{name: extra, table: holding, address: 9, type: uint16}]
"""
    config = parse_config(text, source="c.yaml", env={})
    inv, meter = config.devices
    assert meter.points[0].name == "extra"
    assert (inv.sunspec, inv.points) == (True, ())
    chain = _chain(build_image(PROOF_MODELS))
    running = sunspec.with_chains(config, {"inv": chain, "meter": chain})
    inv2, meter2 = running.devices
    assert (inv2.manufacturer, inv2.serial, inv2.sunspec_models) == (
        "SunSpecTest",
        "SN0042-7",
        (1, 103, 160, 203, 802),
    )
    assert meter2.manufacturer == "Mine"  # the configuration's wins
    assert meter2.points[0].name == "extra" and len(meter2.points) > 200
    assert sunspec.with_chains(config, {}) is config


def test_a_device_that_takes_short_reads_is_read_in_short_reads() -> None:
    layout = build_image(PROOF_MODELS)
    program = sunspec.find_chain(max_read=20)
    sizes: list[int] = []
    request = next(program)
    try:
        while True:
            sizes.append(request[1])
            address, count = request
            request = program.send([layout.image[a] for a in range(address, address + count)])
    except StopIteration as done:
        assert done.value == _chain(layout)
    assert max(sizes) == 20
