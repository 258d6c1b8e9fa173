"""Drawings of a scale-permuted backbone, as in the SpineNet paper's Figure 3.

Blocks are placed by build order (x, left to right) and feature level (y,
higher levels further up); each learned parent -> child connection is a
curve with an arrow (dashed red: an unconsumed block fused into an output
block). As in the paper, bottleneck blocks are rectangles, residual blocks
diamonds and output blocks have a red border (labelled with the endpoint
P3..P7 they feed); MBConv blocks are hexagons and ResNeXt blocks octagons.
Stem blocks are grey; a block that reaches no endpoint (so it is not in the
built model) is white with a grey outline. Each block shows its number and
its output width; a block repeated r times in sequence (SpineNet-96 and up)
is drawn as a stack and marked with r.

render_svg() returns SVG text, render_png() PNG bytes (Pillow); both draw
the same Layout, in SVG user units = PNG pixels / scale. Nothing here writes
files: official/draw_architecture.py does.
"""

import dataclasses
import io
import math
import os
from xml.sax.saxutils import escape, quoteattr

from modeling.architecture_graph import PARENT, UNCONSUMED

FORMATS = ("svg", "png")

# Geometry, in SVG user units (PNG pixels at scale 1).
NODE_WIDTH = 60
NODE_HEIGHT = 40
COLUMN = 86  # x distance between consecutive blocks
ROW = 90  # y distance between consecutive levels
MARGIN_LEFT = 64  # room for the level labels
MARGIN_RIGHT = 36
TITLE_HEIGHT = 64  # title and subtitle
HEADROOM = 58  # above the top level: output labels, arcs of top-level edges
AXIS_HEIGHT = 34  # below the bottom level: "block order" axis
LEGEND_ROW = 28
MARGIN_BOTTOM = 14
STACK_OFFSET = 4  # shift of each repeat drawn behind a repeated block
MAX_STACK = 3
ARROW_LENGTH = 9
ARROW_HALF_WIDTH = 4
CURVE_SAMPLES = 40

FONT_FAMILY = "DejaVu Sans, Verdana, Arial, sans-serif"
TITLE_SIZE = 18
SUBTITLE_SIZE = 12
LABEL_SIZE = 12
SMALL_SIZE = 10
LEGEND_SIZE = 11

INK = "#222222"
GRID = "#d8d8d8"
MUTED = "#666666"
OUTPUT_RED = "#d62728"
STEM_FILL = "#d9d9d9"
UNUSED_FILL = "#ffffff"
UNUSED_INK = "#9a9a9a"


@dataclasses.dataclass(frozen=True)
class BlockStyle:
  shape: str
  fill: str
  legend: str


# Rectangle = bottleneck and diamond = residual as in the paper's Figure 3.
BLOCK_STYLES = {
    "bottleneck": BlockStyle("rectangle", "#a6c8ec", "bottleneck block"),
    "residual": BlockStyle("diamond", "#f7c58b", "residual block"),
    "resnext": BlockStyle("octagon", "#c9b3e6", "ResNeXt block"),
    "mbconv": BlockStyle("hexagon", "#a9dba0", "MBConv block"),
}

# Shapes are scaled so that two lines of text fit inside each of them.
SHAPE_SCALE = {"rectangle": 1.0, "diamond": 1.3, "hexagon": 1.05,
               "octagon": 1.05}

EDGE_STYLES = {
    PARENT: dict(colour="#4d4d4d", width=1.3, dash=None,
                 legend="parent \u2192 child connection"),
    UNCONSUMED: dict(colour=OUTPUT_RED, width=1.3, dash=(5, 3),
                     legend="unconsumed block fused into an output block"),
}


@dataclasses.dataclass(frozen=True)
class NodeLayout:
  """Where block `index` is drawn: center, outline and the stacked repeats."""
  index: int
  center: tuple
  polygon: tuple
  stack: tuple  # polygons behind the block, farthest first
  fill: str
  outline: str
  outline_width: float
  texts: tuple  # (x, baseline y, text, size, bold, colour)
  tooltip: str


@dataclasses.dataclass(frozen=True)
class EdgeLayout:
  """A connection: polyline from the parent's outline to the child's."""
  parent: int
  child: int
  kind: str
  points: tuple
  arrow: tuple  # triangle, tip first


@dataclasses.dataclass(frozen=True)
class Layout:
  """Everything the renderers draw, in user units; width x height canvas."""
  width: int
  height: int
  title: str
  subtitle: str
  nodes: tuple
  edges: tuple
  level_rows: dict  # level -> y of its row
  axis_y: float
  legend: tuple  # (kind, x, y, style key, text)


def format_for_path(path):
  """The drawing format, "svg" or "png", from the path's extension.

  Raises:
    ValueError: any other extension (the message names the path).
  """
  extension = os.path.splitext(str(path))[1].lower()
  if extension.lstrip(".") not in FORMATS:
    raise ValueError(
        f"Cannot tell the drawing format of {str(path)!r}: its extension is "
        f"{extension or '(none)'!r}; expected .svg or .png.")
  return extension.lstrip(".")


def _text_width(text, size, bold=False):
  """Approximate advance of DejaVu Sans text (no font metrics in SVG)."""
  return len(text) * size * (0.66 if bold else 0.6)


def _shape_points(shape, cx, cy):
  scale = SHAPE_SCALE[shape]
  hw, hh = NODE_WIDTH * scale / 2, NODE_HEIGHT * scale / 2
  if shape == "rectangle":
    points = ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))
  elif shape == "diamond":
    points = ((0, -hh), (hw, 0), (0, hh), (-hw, 0))
  elif shape == "hexagon":
    q = hw * 0.35
    points = ((-hw, 0), (-hw + q, -hh), (hw - q, -hh), (hw, 0), (hw - q, hh),
              (-hw + q, hh))
  elif shape == "octagon":
    c = hh * 0.5
    points = ((-hw + c, -hh), (hw - c, -hh), (hw, -hh + c), (hw, hh - c),
              (hw - c, hh), (-hw + c, hh), (-hw, hh - c), (-hw, -hh + c))
  else:
    raise ValueError(f"Unknown block shape {shape!r}.")
  return tuple((round(cx + x, 2), round(cy + y, 2)) for x, y in points)


def _inside(point, polygon):
  """Even-odd rule: is `point` inside the closed `polygon`?"""
  x, y = point
  inside = False
  for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
    if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
      inside = not inside
  return inside


def _anchor_offsets(count, polygon):
  """Vertical offsets of `count` edge anchors spread over a block's middle."""
  if count == 1:
    return [0.0]
  height = max(y for _, y in polygon) - min(y for _, y in polygon)
  gap = min(8.0, 0.5 * height / (count - 1))
  return [(i - (count - 1) / 2) * gap for i in range(count)]


def _bezier(p0, p1, p2, p3, t):
  s = 1.0 - t
  return tuple(s ** 3 * a + 3 * s * s * t * b + 3 * s * t * t * c + t ** 3 * d
               for a, b, c, d in zip(p0, p1, p2, p3))


def _crossing(curve, polygon, t_in, t_out):
  """Parameter in [t_in, t_out] where `curve` leaves `polygon` (bisection)."""
  for _ in range(30):
    mid = (t_in + t_out) / 2
    if _inside(curve(mid), polygon) == _inside(curve(t_in), polygon):
      t_in = mid
    else:
      t_out = mid
  return t_out


def _edge_geometry(start, end, parent_polygon, child_polygon, arc):
  """Polyline and arrowhead of a connection, clipped to the two outlines.

  Args:
    start, end: anchors inside the parent and the child block (their centers
      shifted up or down so that the edges of one block spread out).
    parent_polygon, child_polygon: the block outlines.
    arc: 0 for an S-curve; otherwise the height of an arc over (arc > 0) or
      under (arc < 0) the blocks between two blocks of one level.
  """
  (x0, y0), (x3, y3) = start, end
  dx, dy = x3 - x0, y3 - y0
  if arc:
    c1, c2 = (x0 + 0.15 * dx, y0 - arc), (x3 - 0.15 * dx, y3 - arc)
  else:
    # A flattened S-curve: steep short edges stay nearly straight, long ones
    # leave and arrive close to horizontally.
    c1, c2 = (x0 + 0.45 * dx, y0 + 0.2 * dy), (x3 - 0.45 * dx, y3 - 0.3 * dy)

  def curve(t):
    return _bezier(start, c1, c2, end, t)

  t0 = _crossing(curve, parent_polygon, 0.0, 0.5)
  t1 = _crossing(curve, child_polygon, 1.0, 0.5)
  points = tuple(
      tuple(round(v, 2) for v in curve(t0 + (t1 - t0) * i / CURVE_SAMPLES))
      for i in range(CURVE_SAMPLES + 1))
  tip = points[-1]
  back = curve(t1 - 0.02)
  ux, uy = tip[0] - back[0], tip[1] - back[1]
  norm = math.hypot(ux, uy) or 1.0
  ux, uy = ux / norm, uy / norm
  bx, by = tip[0] - ARROW_LENGTH * ux, tip[1] - ARROW_LENGTH * uy
  arrow = (tip,
           (round(bx - ARROW_HALF_WIDTH * uy, 2),
            round(by + ARROW_HALF_WIDTH * ux, 2)),
           (round(bx + ARROW_HALF_WIDTH * uy, 2),
            round(by - ARROW_HALF_WIDTH * ux, 2)))
  return points, arrow


def _arc_height(parent, child, top_row_y):
  """Arc height for an edge along one level past other blocks, else 0."""
  (x0, y0), (x3, y3) = parent.center, child.center
  if abs(y3 - y0) > 1e-6 or x3 - x0 < COLUMN * 1.5:
    return 0.0
  height = min(0.62 * ROW, 24.0 + 9.0 * (x3 - x0) / COLUMN)
  return height if y0 > top_row_y + 1e-6 else -height  # Under the top row.


def _legend_items(graph):
  items = [("block", key, BLOCK_STYLES[key].legend)
           for key in graph.block_types]
  if any(node.is_stem for node in graph.nodes):
    items.append(("stem", graph.nodes[0].block_fn, "stem block"))
  items.append(("output", None, "output block \u2192 endpoint Pn"))
  if not all(node.is_used for node in graph.nodes):
    items.append(("unused", graph.nodes[0].block_fn,
                  "block reaching no endpoint (not built)"))
  if any(node.repeats > 1 for node in graph.nodes):
    items.append(("repeat", None, "block repeated r times (\u00d7r)"))
  kinds = [kind for kind in EDGE_STYLES
           if any(edge.kind == kind for edge in graph.edges)]
  items += [("edge", kind, EDGE_STYLES[kind]["legend"]) for kind in kinds]
  items.append(("text", None, "in a block: its number, its output channels"))
  return items


def _subtitle(graph):
  stems = sum(node.is_stem for node in graph.nodes)
  counts = {kind: sum(edge.kind == kind for edge in graph.edges)
            for kind in EDGE_STYLES}
  text = (f"{stems} stem + {len(graph.nodes) - stems} scale-permuted blocks, "
          f"{counts[PARENT]} connections")
  if counts[UNCONSUMED]:
    text += f" + {counts[UNCONSUMED]} into output blocks"
  return (text + f"; endpoints P{graph.min_level}-P{graph.max_level}; "
          f"Keras name {graph.name!r}")


def layout(graph, title=None):
  """Places the blocks, connections, axis and legend of `graph`.

  Args:
    graph: modeling.architecture_graph.ArchitectureGraph.
    title: heading (default graph.title).

  Returns:
    Layout.
  """
  unknown = sorted({n.block_fn for n in graph.nodes} - set(BLOCK_STYLES))
  if unknown:
    raise ValueError(f"No drawing style for block type(s) {unknown}; known "
                     f"types are {sorted(BLOCK_STYLES)}.")
  title = graph.title if title is None else title
  subtitle = _subtitle(graph)
  levels = range(min(graph.levels), max(graph.levels) + 1)
  top = TITLE_HEIGHT + HEADROOM
  level_rows = {level: top + (levels[-1] - level) * ROW for level in levels}
  axis_y = level_rows[levels[0]] + NODE_HEIGHT + 8

  width = max(MARGIN_LEFT + len(graph.nodes) * COLUMN + MARGIN_RIGHT,
              int(_text_width(title, TITLE_SIZE, bold=True)) + 2 * 20,
              int(_text_width(subtitle, SUBTITLE_SIZE)) + 2 * 20)

  nodes = []
  for node in graph.nodes:
    style = BLOCK_STYLES[node.block_fn]
    cx = MARGIN_LEFT + (node.index + 0.5) * COLUMN
    cy = level_rows[node.level]
    polygon = _shape_points(style.shape, cx, cy)
    behind = min(node.repeats, MAX_STACK) - 1
    stack = tuple(
        _shape_points(style.shape, cx + r * STACK_OFFSET, cy - r * STACK_OFFSET)
        for r in range(behind, 0, -1))
    detail = str(node.width)
    if node.repeats > 1:
      detail += f" \u00d7{node.repeats}"
    ink = INK if node.is_used else UNUSED_INK
    texts = [(cx, cy - 3, node.label, LABEL_SIZE, True, ink),
             (cx, cy + 11, detail, SMALL_SIZE, False, ink)]
    if node.endpoint_level is not None:
      top_y = min(y for _, y in polygon + sum(stack, ()))
      texts.append((cx, top_y - 6, f"P{node.endpoint_level}", LABEL_SIZE, True,
                    OUTPUT_RED))
    kind = "stem block" if node.is_stem else "block"
    tooltip = (f"{kind} {node.label}: level {node.level}, {node.block_fn}, "
               f"{node.width} channels" +
               (f", {node.repeats} repeats" if node.repeats > 1 else "") +
               (f", output P{node.endpoint_level}"
                if node.endpoint_level is not None else
                (", output (unused level)" if node.is_output else "")) +
               ("" if node.is_used else ", reaches no endpoint (not built)"))
    if not node.is_used:
      fill = UNUSED_FILL
    else:
      fill = STEM_FILL if node.is_stem else style.fill
    nodes.append(NodeLayout(
        index=node.index, center=(cx, cy), polygon=polygon, stack=stack,
        fill=fill, outline=OUTPUT_RED if node.is_output else ink,
        outline_width=3.0 if node.is_output else 1.2, texts=tuple(texts),
        tooltip=tooltip))

  top_row_y = level_rows[levels[-1]]
  arcs = [_arc_height(nodes[e.parent], nodes[e.child], top_row_y)
          for e in graph.edges]
  # The edges out of (into) a block start (end) at anchors spread down its
  # middle, ordered by the height of the other end (arcs over the row count
  # as highest), so that they fan out instead of piling up on one point.
  anchors = {}
  for side, own, other in (("out", "parent", "child"),
                           ("in", "child", "parent")):
    for node in nodes:
      mine = [i for i, e in enumerate(graph.edges)
              if getattr(e, own) == node.index]
      mine.sort(key=lambda i: (
          -math.inf if arcs[i] > 0 else math.inf if arcs[i] < 0 else
          nodes[getattr(graph.edges[i], other)].center[1],
          getattr(graph.edges[i], other)))
      for i, offset in zip(mine, _anchor_offsets(len(mine), node.polygon)):
        anchors[i, side] = (node.center[0], node.center[1] + offset)
  edges = []
  for i, edge in enumerate(graph.edges):
    points, arrow = _edge_geometry(
        anchors[i, "out"], anchors[i, "in"], nodes[edge.parent].polygon,
        nodes[edge.child].polygon, arcs[i])
    edges.append(EdgeLayout(edge.parent, edge.child, edge.kind, points, arrow))

  legend = []
  x, y = 20.0, axis_y + AXIS_HEIGHT
  for kind, key, text in _legend_items(graph):
    item_width = 34 + _text_width(text, LEGEND_SIZE) + 22
    if x + item_width > width - 20 and x > 20:
      x, y = 20.0, y + LEGEND_ROW
    legend.append((kind, x, y, key, text))
    x += item_width
  height = int(y + LEGEND_ROW / 2 + MARGIN_BOTTOM)
  return Layout(width=int(width), height=height, title=title,
                subtitle=subtitle, nodes=tuple(nodes), edges=tuple(edges),
                level_rows=level_rows, axis_y=axis_y, legend=tuple(legend))


def _legend_swatch(kind, key, x, y):
  """Shapes, lines and texts of one legend swatch centred at (x + 14, y)."""
  cx = x + 14
  shapes, lines = [], []
  if kind in ("block", "stem", "unused", "output", "repeat"):
    shape = BLOCK_STYLES[key].shape if key else "rectangle"
    points = tuple((cx + (px - cx) * 0.4, y + (py - y) * 0.4)
                   for px, py in _shape_points(shape, cx, y))
    fill = {"block": BLOCK_STYLES[key].fill if key else "#ffffff",
            "stem": STEM_FILL}.get(kind, "#ffffff")
    outline = {"output": OUTPUT_RED, "unused": UNUSED_INK}.get(kind, INK)
    if kind == "repeat":
      shapes.append((tuple((px + 3, py - 3) for px, py in points), "#ffffff",
                     INK, 1.0))
    shapes.append((points, fill, outline, 2.5 if kind == "output" else 1.0))
  elif kind == "edge":
    style = EDGE_STYLES[key]
    tip = (cx + 14, y)
    lines.append((((cx - 14, y), (cx + 14 - ARROW_LENGTH / 2, y)), key,
                  (tip, (tip[0] - ARROW_LENGTH, y - ARROW_HALF_WIDTH),
                   (tip[0] - ARROW_LENGTH, y + ARROW_HALF_WIDTH)),
                  style))
  return shapes, lines


# --- SVG.


def _svg_points(points):
  return " ".join(f"{x:g},{y:g}" for x, y in points)


def _svg_text(x, y, text, size, bold=False, colour=INK, anchor="middle"):
  weight = ' font-weight="bold"' if bold else ""
  return (f'<text x="{x:g}" y="{y:g}" font-size="{size}"{weight} '
          f'fill="{colour}" text-anchor="{anchor}">{escape(text)}</text>')


def _svg_polyline(points, style):
  dash = (f' stroke-dasharray="{style["dash"][0]},{style["dash"][1]}"'
          if style["dash"] else "")
  path = "M " + " L ".join(f"{x:g},{y:g}" for x, y in points)
  return (f'<path d="{path}" fill="none" stroke="{style["colour"]}" '
          f'stroke-width="{style["width"]}"{dash}/>')


def render_svg(graph, title=None):
  """The drawing as SVG text (UTF-8, standalone).

  One <g class="block"> per block (data-index, data-level, data-type,
  data-output attributes) and one <g class="edge"> per connection
  (data-parent, data-child, data-kind), so the file can be checked or
  restyled.
  """
  lay = layout(graph, title)
  out = [
      '<?xml version="1.0" encoding="UTF-8"?>',
      f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay.width}" '
      f'height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" '
      f'font-family={quoteattr(FONT_FAMILY)}>',
      f'<title>{escape(lay.title)}</title>',
      f'<rect width="{lay.width}" height="{lay.height}" fill="#ffffff"/>',
      _svg_text(lay.width / 2, 28, lay.title, TITLE_SIZE, bold=True),
      _svg_text(lay.width / 2, 48, lay.subtitle, SUBTITLE_SIZE,
                colour=MUTED),
      '<g class="levels">']
  for level, y in lay.level_rows.items():
    out.append(f'<line x1="{MARGIN_LEFT - 8}" y1="{y:g}" '
               f'x2="{lay.width - MARGIN_RIGHT / 2:g}" y2="{y:g}" '
               f'stroke="{GRID}" stroke-dasharray="3,4"/>')
    out.append(_svg_text(MARGIN_LEFT - 14, y + 4, f"L{level}", LABEL_SIZE,
                         bold=True, colour=MUTED, anchor="end"))
  out.append(_svg_text(MARGIN_LEFT + 8, lay.axis_y + 16,
                       "block order \u2192", SMALL_SIZE, colour=MUTED,
                       anchor="start"))
  out.append(_svg_text(MARGIN_LEFT - 14, lay.level_rows[max(lay.level_rows)]
                       - 30, "level", SMALL_SIZE, colour=MUTED, anchor="end"))
  out.append('</g>')
  out.append('<g class="edges">')
  for edge in lay.edges:
    style = EDGE_STYLES[edge.kind]
    out.append(f'<g class="edge" data-parent="{edge.parent}" '
               f'data-child="{edge.child}" data-kind="{edge.kind}">')
    out.append(_svg_polyline(edge.points, style))
    out.append(f'<polygon points="{_svg_points(edge.arrow)}" '
               f'fill="{style["colour"]}"/>')
    out.append('</g>')
  out.append('</g>')
  out.append('<g class="blocks">')
  for node_lay, node in zip(lay.nodes, graph.nodes):
    endpoint = "" if node.endpoint_level is None else node.endpoint_level
    out.append(
        f'<g class="block" id="block-{escape(node.label)}" '
        f'data-index="{node.index}" data-level="{node.level}" '
        f'data-type="{node.block_fn}" data-width="{node.width}" '
        f'data-repeats="{node.repeats}" data-stem="{int(node.is_stem)}" '
        f'data-output="{endpoint}" data-used="{int(node.is_used)}">')
    out.append(f'<title>{escape(node_lay.tooltip)}</title>')
    for polygon in node_lay.stack:
      out.append(f'<polygon points="{_svg_points(polygon)}" '
                 f'fill="{node_lay.fill}" stroke="{INK}" stroke-width="0.8"/>')
    out.append(f'<polygon points="{_svg_points(node_lay.polygon)}" '
               f'fill="{node_lay.fill}" stroke="{node_lay.outline}" '
               f'stroke-width="{node_lay.outline_width}"/>')
    for x, y, text, size, bold, colour in node_lay.texts:
      out.append(_svg_text(x, y, text, size, bold, colour))
    out.append('</g>')
  out.append('</g>')
  out.append('<g class="legend">')
  for kind, x, y, key, text in lay.legend:
    shapes, lines = _legend_swatch(kind, key, x, y)
    for points, fill, outline, width in shapes:
      out.append(f'<polygon points="{_svg_points(points)}" fill="{fill}" '
                 f'stroke="{outline}" stroke-width="{width}"/>')
    for points, _, arrow, style in lines:
      out.append(_svg_polyline(points, style))
      out.append(f'<polygon points="{_svg_points(arrow)}" '
                 f'fill="{style["colour"]}"/>')
    indent = 0 if kind == "text" else 34
    out.append(_svg_text(x + indent, y + 4, text, LEGEND_SIZE,
                         anchor="start"))
  out.append('</g>')
  out.append('</svg>')
  return "\n".join(out) + "\n"


# --- PNG.


def _font(size, bold, scale):
  # pylint: disable=g-import-not-at-top
  from PIL import ImageFont
  name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
  try:
    return ImageFont.truetype(name, round(size * scale))
  except OSError:  # DejaVu not installed: Pillow's bundled font.
    return ImageFont.load_default(round(size * scale))


def _dashes(points, dash):
  """Splits a polyline into the drawn pieces of an (on, off) dash pattern."""
  on, off = dash
  period = on + off
  pieces, current, travelled = [], [], 0.0
  for (x1, y1), (x2, y2) in zip(points, points[1:]):
    length = math.hypot(x2 - x1, y2 - y1)
    done = 0.0
    while done < length - 1e-9:
      phase = travelled % period
      drawing = phase < on
      step = max(1e-6, min(length - done,
                           (on - phase) if drawing else (period - phase)))
      if drawing:
        t0, t1 = done / length, min(1.0, (done + step) / length)
        if not current:
          current = [(x1 + (x2 - x1) * t0, y1 + (y2 - y1) * t0)]
        current.append((x1 + (x2 - x1) * t1, y1 + (y2 - y1) * t1))
      elif current:
        pieces.append(current)
        current = []
      done += step
      travelled += step
  if current:
    pieces.append(current)
  return pieces


def render_png(graph, scale=2, title=None):
  """The drawing as PNG bytes, `scale` pixels per SVG unit.

  The image is (layout(graph).width * scale, layout(graph).height * scale)
  pixels, RGB.
  """
  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw
  if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
    raise ValueError(f"PNG scale must be an integer >= 1, got {scale!r}.")
  lay = layout(graph, title)
  image = Image.new("RGB", (lay.width * scale, lay.height * scale), "white")
  draw = ImageDraw.Draw(image)

  def pts(points, dx=0.0, dy=0.0):
    return [((x + dx) * scale, (y + dy) * scale) for x, y in points]

  def text(x, y, value, size, bold=False, colour=INK, anchor="ms"):
    draw.text((x * scale, y * scale), value, fill=colour,
              font=_font(size, bold, scale), anchor=anchor)

  def polyline(points, style):
    pieces = _dashes(points, style["dash"]) if style["dash"] else [points]
    for piece in pieces:
      draw.line(pts(piece), fill=style["colour"],
                width=max(1, round(style["width"] * scale)), joint="curve")

  text(lay.width / 2, 28, lay.title, TITLE_SIZE, bold=True)
  text(lay.width / 2, 48, lay.subtitle, SUBTITLE_SIZE, colour=MUTED)
  for level, y in lay.level_rows.items():
    polyline(((MARGIN_LEFT - 8, y), (lay.width - MARGIN_RIGHT / 2, y)),
             dict(colour=GRID, width=1.0, dash=(3, 4)))
    text(MARGIN_LEFT - 14, y + 4, f"L{level}", LABEL_SIZE, True, MUTED, "rs")
  text(MARGIN_LEFT + 8, lay.axis_y + 16, "block order \u2192", SMALL_SIZE,
       colour=MUTED, anchor="ls")
  text(MARGIN_LEFT - 14, lay.level_rows[max(lay.level_rows)] - 30, "level",
       SMALL_SIZE, colour=MUTED, anchor="rs")
  for edge in lay.edges:
    style = EDGE_STYLES[edge.kind]
    polyline(edge.points, style)
    draw.polygon(pts(edge.arrow), fill=style["colour"])
  for node in lay.nodes:
    for polygon in node.stack:
      draw.polygon(pts(polygon), fill=node.fill, outline=INK,
                   width=max(1, round(0.8 * scale)))
    draw.polygon(pts(node.polygon), fill=node.fill, outline=node.outline,
                 width=max(1, round(node.outline_width * scale)))
    for x, y, value, size, bold, colour in node.texts:
      text(x, y, value, size, bold, colour)
  for kind, x, y, key, value in lay.legend:
    shapes, lines = _legend_swatch(kind, key, x, y)
    for points, fill, outline, width in shapes:
      draw.polygon(pts(points), fill=fill, outline=outline,
                   width=max(1, round(width * scale)))
    for points, _, arrow, style in lines:
      polyline(points, style)
      draw.polygon(pts(arrow), fill=style["colour"])
    indent = 0 if kind == "text" else 34
    text(x + indent, y + 4, value, LEGEND_SIZE, anchor="ls")
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def render(graph, fmt, scale=2, title=None):
  """The drawing in format `fmt` ("svg" or "png") as bytes."""
  if fmt == "svg":
    return render_svg(graph, title).encode("utf-8")
  if fmt == "png":
    return render_png(graph, scale, title)
  raise ValueError(f"Unknown drawing format {fmt!r}; expected one of "
                   f"{FORMATS}.")
