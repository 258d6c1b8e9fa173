"""Block graph and drawings of scale-permuted backbones (issue 6), at 128 px."""

import io
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from modeling import architecture_drawing as drawing
from modeling import architecture_graph as ag
from modeling.backbones import eff_spinenet as eff_lib
from modeling.backbones.resnet import resnet
from modeling.backbones.spinenet import SPINENET_BLOCK_SPECS, spinenet
from modeling.backbones.spinenet_mbconv import (MBCONV_BLOCK_SPECS,
                                                spinenet_mbconv)

SIZE = 128
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def spinenet49():
  return spinenet((SIZE, SIZE, 3), "49")


@pytest.fixture(scope="module")
def graph49(spinenet49):
  return ag.graph_from_backbone(spinenet49)


def test_spinenet49_graph_follows_the_block_specs(graph49):
  stems, blocks = graph49.nodes[:2], graph49.nodes[2:]
  assert len(graph49.nodes) == 2 + len(SPINENET_BLOCK_SPECS) == 17
  assert all(n.is_stem and n.level == 2 and n.block_fn == "bottleneck"
             for n in stems)
  assert [n.label for n in graph49.nodes[:3]] == ["S1", "S2", "1"]
  assert [(n.level, n.block_fn, n.is_output) for n in blocks] == [
      (level, fn, out) for level, fn, _, out in SPINENET_BLOCK_SPECS]
  assert graph49.levels == [2, 3, 4, 5, 6, 7]
  parent_edges = [(e.parent, e.child) for e in graph49.edges
                  if e.kind == ag.PARENT]
  assert parent_edges == [(offset, k + 2)
                          for k, (_, _, offsets, _) in
                          enumerate(SPINENET_BLOCK_SPECS)
                          for offset in offsets]
  assert len(parent_edges) == 30
  # Block 10 (L5, never consumed) also feeds the L5 output block 13.
  assert [(e.parent, e.child) for e in graph49.edges
          if e.kind == ag.UNCONSUMED] == [(11, 14)]
  endpoints = {n.endpoint_level: n.label for n in graph49.nodes
               if n.endpoint_level is not None}
  assert endpoints == {4: "11", 3: "12", 5: "13", 7: "14", 6: "15"}
  # Bottleneck output = 4 x filter map; residual = 1 x (SpineNet §3.2).
  assert [graph49.nodes[i].width for i in (0, 2, 3, 4)] == [256, 256, 256,
                                                            512]
  assert graph49.title == "SpineNet-49 (bottleneck/residual blocks)"
  assert graph49.parents(16) == [12, 14]


def _output_tensor(model, node):
  return model.get_layer(f"{node.layer_prefix}_repeat_{node.repeats}").output


@pytest.mark.parametrize("build", [
    lambda: spinenet((SIZE, SIZE, 3), "96", filter_size_scale=0.25),
    lambda: spinenet((SIZE, SIZE, 3), "49", filter_size_scale=0.25,
                     block_fn_override="resnext"),
    lambda: spinenet_mbconv((SIZE, SIZE, 3), "49XS"),
    lambda: eff_lib.eff_spinenet((SIZE, SIZE, 3), "D1",
                                 feature_multiplier=0.25),
    # Block 11 (unconsumed, L5) narrower than the L5 output block 13: the
    # shapes differ, so it is not fused there.
    lambda: eff_lib.eff_spinenet(
        (SIZE, SIZE, 3), "D0", feature_multiplier=0.25,
        block_filters=[96 if i == 12 else w for i, w in
                       enumerate(eff_lib.EFF_SPINENET_D0_FILTERS)]),
], ids=["spinenet96", "spinenet49_resnext", "mbconv49xs", "eff_d1",
        "eff_d0_other_widths"])
def test_graph_is_the_network_that_was_built(build):
  """Every edge is a tensor the backbone fuses; widths and repeats too."""
  model = build()
  graph = ag.graph_from_backbone(model)
  names = [layer.name for layer in model.layers]
  for node in graph.nodes:
    if not node.is_used:  # Keras leaves out what reaches no output.
      assert not any(n.startswith(node.layer_prefix + "_") for n in names)
      continue
    last = model.get_layer(f"{node.layer_prefix}_repeat_{node.repeats}")
    assert last.output.shape[-1] == node.width, node
    assert f"{node.layer_prefix}_repeat_{node.repeats + 1}" not in names
    if node.is_stem:
      continue
    fusion = model.get_layer(f"{node.layer_prefix}_fusion")
    fused = fusion.input if isinstance(fusion.input, list) else [fusion.input]
    edges = [e for e in graph.edges if e.child == node.index]
    assert len(fused) == len(edges), node
    assert all(graph.nodes[e.parent].is_used for e in edges)
    for j, edge in enumerate(edges):
      parent = graph.nodes[edge.parent]
      if edge.kind == ag.PARENT:
        resample = model.get_layer(f"{node.layer_prefix}_resample_{j + 1}")
        assert resample.input is _output_tensor(model, parent), (node, edge)
      else:
        assert fused[j] is _output_tensor(model, parent), (node, edge)


def test_a_block_reaching_no_endpoint_is_marked_unused():
  widths = list(eff_lib.EFF_SPINENET_D0_FILTERS)
  widths[12] = 96  # Block 11 (L5) no longer matches the L5 output block 13.
  graph = ag.graph_from_config(
      dict(block_specs=MBCONV_BLOCK_SPECS, filter_size_scale=1.0,
           block_filters=widths, block_repeats=1, min_level=3, max_level=7,
           name="eff_spinenet_d0"), ag.SPINENET_MBCONV)
  assert [n.label for n in graph.nodes if not n.is_used] == ["11"]
  assert not [e for e in graph.edges if e.kind == ag.UNCONSUMED]
  root = ET.fromstring(drawing.render_svg(graph).encode("utf-8"))
  used = {g.get("id"): g.get("data-used") for g in root.iter(SVG + "g")
          if g.get("class") == "block"}
  assert used["block-11"] == "0" and used["block-10"] == "1"
  texts = ["".join(t.itertext()) for t in root.iter(SVG + "text")]
  assert "block reaching no endpoint (not built)" in texts


def test_block_types_repeats_and_names():
  resnext = ag.graph_from_backbone(
      spinenet((SIZE, SIZE, 3), "49S", block_fn_override="resnext"))
  assert resnext.block_types == ["resnext", "residual"]
  assert resnext.display_name == "SpineNet-49S"
  d1 = ag.graph_from_backbone(eff_lib.eff_spinenet((SIZE, SIZE, 3), "D1"))
  assert d1.title == "Eff-SpineNet-D1 (MBConv blocks)"
  assert [n.level for n in d1.nodes[:2]] == [1, 2]
  assert [n.width for n in d1.nodes] == list(eff_lib.EFF_SPINENET_D0_FILTERS)
  assert [n.repeats for n in d1.nodes] == list(
      eff_lib.SCALING_MAP["D1"]["block_repeats"])
  assert [n.level for n in d1.nodes[2:]] == [s[0] for s in MBCONV_BLOCK_SPECS]


@pytest.mark.parametrize("name,expected", [
    ("spinenet49", "SpineNet-49"), ("spinenet143l", "SpineNet-143L"),
    ("spinenet49xxs_mbconv", "SpineNet-49XXS MBConv"),
    ("eff_spinenet_m0", "Eff-SpineNet-M0"),
    ("sp_efficientnet_b0", "SP-EfficientNet-B0"), ("my_net", "my_net")])
def test_display_name(name, expected):
  assert ag.display_name(name) == expected


def test_graph_from_config_alone_matches_the_model(spinenet49, graph49):
  config = dict(block_specs=SPINENET_BLOCK_SPECS, num_init_blocks=2,
                filter_size_scale=1.0, block_repeats=1, min_level=3,
                max_level=7, input_shape=(640, 640, 3), name="spinenet49")
  assert ag.graph_from_config(config, ag.SPINENET) == graph49
  # An output block outside min..max is still an output, but feeds no endpoint.
  narrow = ag.graph_from_config(dict(config, max_level=6), ag.SPINENET)
  l7 = [n for n in narrow.nodes if n.is_output and n.level == 7]
  assert len(l7) == 1 and l7[0].endpoint_level is None


def test_bad_inputs_say_what_was_expected():
  with pytest.raises(ValueError, match="lacks.*block_specs"):
    ag.graph_from_config({"name": "x"}, ag.SPINENET)
  with pytest.raises(ValueError, match="Unknown backbone family 'resnet'"):
    ag.graph_from_config({}, "resnet")
  with pytest.raises(ValueError, match=r"block_specs\[0\].*parent offset 5"):
    ag.graph_from_config(
        dict(block_specs=[(3, "bottleneck", (0, 5), True)], num_init_blocks=2,
             filter_size_scale=1.0, block_repeats=1, min_level=3,
             max_level=3), ag.SPINENET)
  model = resnet((SIZE, SIZE, 3), 50)
  with pytest.raises(ValueError, match="needs a scale-permuted backbone.*"
                     "ResNet"):
    ag.graph_from_backbone(model)


def test_modules_import_without_tensorflow():
  code = ("import sys; import modeling.architecture_graph, "
          "modeling.architecture_drawing; "
          "print(sorted(m for m in ('tensorflow', 'keras', 'PIL') "
          "if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == "[]"


# --- Drawings.


def test_layout_places_blocks_by_order_and_level(graph49):
  lay = drawing.layout(graph49)
  xs = [n.center[0] for n in lay.nodes]
  assert xs == sorted(xs) and len(set(xs)) == len(xs)
  for node, placed in zip(graph49.nodes, lay.nodes):
    assert placed.center[1] == lay.level_rows[node.level]
  # Higher levels further up (smaller y), as in the paper.
  assert lay.level_rows[7] < lay.level_rows[5] < lay.level_rows[2]
  for edge in lay.edges:
    assert edge.points[0][0] < edge.points[-1][0]
    assert edge.arrow[0] == edge.points[-1]  # The arrow points at the child.


def test_svg_has_one_element_per_block_and_edge(graph49):
  root = ET.fromstring(drawing.render_svg(graph49).encode("utf-8"))
  assert root.tag == SVG + "svg"
  blocks = [g for g in root.iter(SVG + "g") if g.get("class") == "block"]
  edges = [g for g in root.iter(SVG + "g") if g.get("class") == "edge"]
  assert len(blocks) == len(graph49.nodes) == 17
  assert len(edges) == len(graph49.edges) == 31
  assert [(int(g.get("data-level")), g.get("data-type")) for g in blocks] == [
      (n.level, n.block_fn) for n in graph49.nodes]
  assert sorted(g.get("data-output") for g in blocks
                if g.get("data-output")) == ["3", "4", "5", "6", "7"]
  assert [(int(g.get("data-parent")), int(g.get("data-child")),
           g.get("data-kind")) for g in edges] == [
               (e.parent, e.child, e.kind) for e in graph49.edges]
  texts = ["".join(t.itertext()) for t in root.iter(SVG + "text")]
  assert graph49.title in texts
  assert {"P3", "P4", "P5", "P6", "P7"} <= set(texts)
  assert {"bottleneck block", "residual block", "stem block"} <= set(texts)
  red_outlines = [p for g in blocks for p in g.iter(SVG + "polygon")
                  if p.get("stroke") == drawing.OUTPUT_RED]
  assert len(red_outlines) == 5


def test_custom_title_is_escaped(graph49):
  svg = drawing.render_svg(graph49, title="A <b> & C")
  root = ET.fromstring(svg.encode("utf-8"))
  assert root.find(SVG + "title").text == "A <b> & C"


@pytest.mark.parametrize("scale", [1, 2])
def test_png_has_the_layout_size_and_draws_where_the_layout_says(graph49,
                                                                 scale):
  lay = drawing.layout(graph49)
  image = Image.open(io.BytesIO(drawing.render_png(graph49, scale=scale)))
  assert image.format == "PNG"
  assert image.size == (lay.width * scale, lay.height * scale)
  image = image.convert("RGB")
  red = tuple(int(drawing.OUTPUT_RED[i:i + 2], 16) for i in (1, 3, 5))
  for node in graph49.nodes:
    placed = lay.nodes[node.index]
    (x1, y1), (x2, _) = placed.polygon[0], placed.polygon[1]
    # The middle of a rectangle's top side: red outline for output blocks.
    if drawing.BLOCK_STYLES[node.block_fn].shape == "rectangle":
      pixel = image.getpixel((round((x1 + x2) / 2 * scale),
                              round(y1 * scale)))
      assert (pixel == red) == node.is_output, (node.label, pixel)
    pixel = image.getpixel((round((placed.center[0] - 20) * scale),
                            round(placed.center[1] * scale)))
    fill = drawing.STEM_FILL if node.is_stem else drawing.BLOCK_STYLES[
        node.block_fn].fill
    assert pixel == tuple(int(fill[i:i + 2], 16) for i in (1, 3, 5)), node


def test_png_scale_must_be_a_positive_integer(graph49):
  with pytest.raises(ValueError, match="scale must be an integer >= 1"):
    drawing.render_png(graph49, scale=0)


@pytest.mark.parametrize("path,fmt", [("a/b.svg", "svg"), ("x.PNG", "png"),
                                      ("gs://bucket/net.png", "png")])
def test_format_from_extension(path, fmt):
  assert drawing.format_for_path(path) == fmt


@pytest.mark.parametrize("path", ["net.jpg", "net", "net.svg.gz"])
def test_other_extensions_are_rejected(path):
  with pytest.raises(ValueError, match=f"{path!r}.*expected .svg or .png"):
    drawing.format_for_path(path)
