//! The lineage graph as SVG: laid out left to right by `layout-rs` (a
//! Graphviz-style layered layout: principals, then actions, then
//! datasets), drawn here with presentation attributes only — no script, no
//! style element — so it can sit inline in a page under a strict Content
//! Security Policy or in a standalone report. Each node and edge can carry
//! a link (its request, its log entries) and a tooltip.

use std::fmt::Write;

use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::graph::{Edge, Graph, Node};

/// Where nodes and edges link to; `None`: no link.
pub trait Links {
    fn node(&self, n: &Node) -> Option<String>;
    fn edge(&self, e: &Edge) -> Option<String>;
}

/// No links (a printed report).
pub struct NoLinks;

impl Links for NoLinks {
    fn node(&self, _: &Node) -> Option<String> {
        None
    }
    fn edge(&self, _: &Edge) -> Option<String> {
        None
    }
}

/// Escapes text for XML (and HTML).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// How one node or edge is drawn.
#[derive(Debug, Clone, Default)]
struct Deco {
    href: Option<String>,
    title: String,
    class: &'static str,
    fill: &'static str,
    stroke: &'static str,
    width: f64,
    dashed: bool,
}

const GREEN: &str = "#15803d";
const GREY: &str = "#6b7280";

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(max - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

fn hhmm(at: &str) -> &str {
    at.get(11..16).unwrap_or(at)
}

fn node_label(n: &Node) -> String {
    match n.kind.as_str() {
        "action" => {
            let res = short(n.resource.as_deref().unwrap_or(""), 34);
            let when = n.at.as_deref().map(hhmm).unwrap_or("");
            let how = match &n.approved {
                Some(a) => {
                    let who: Vec<&str> =
                        a.by.iter()
                            .map(|b| b.split_once(':').map_or(b.as_str(), |(_, n)| n))
                            .collect();
                    format!("approved by {} {}", who.join(", "), hhmm(&a.at))
                }
                None => format!("allowed by policy {when}"),
            };
            format!("{}\n{res}\n{how}", n.label)
        }
        "dataset" => format!("{}\n({})", short(&n.label, 38), n.category),
        _ => n.label.clone(),
    }
}

fn node_deco(n: &Node, links: &dyn Links) -> Deco {
    let href = links.node(n);
    match n.kind.as_str() {
        "principal" => Deco {
            href,
            title: format!("{} ({})", n.label, n.category),
            class: "principal",
            fill: "#eef2ff",
            stroke: "#4f46e5",
            width: 2.0,
            dashed: false,
        },
        "action" => {
            let approved = n.approved.is_some();
            let title = match &n.approved {
                Some(a) => format!(
                    "{} on {} — approved by {} at {}; entries {:?}",
                    n.label,
                    n.resource.as_deref().unwrap_or(""),
                    a.by.join(", "),
                    a.at,
                    n.entries
                ),
                None => format!(
                    "{} on {} — allowed by policy; entries {:?}",
                    n.label,
                    n.resource.as_deref().unwrap_or(""),
                    n.entries
                ),
            };
            Deco {
                href,
                title,
                class: if approved {
                    "action approved"
                } else {
                    "action policy"
                },
                fill: if approved { "#dcfce7" } else { "#f3f4f6" },
                stroke: if approved { GREEN } else { GREY },
                width: if approved { 3.0 } else { 1.5 },
                dashed: false,
            }
        }
        _ => Deco {
            href,
            title: format!("{} ({})", n.label, n.category),
            class: "dataset",
            fill: "#fff7ed",
            stroke: "#c2410c",
            width: 2.0,
            dashed: false,
        },
    }
}

fn edge_deco(e: &Edge, links: &dyn Links) -> Deco {
    let approved = e.approved.is_some();
    let how = match &e.approved {
        Some(a) => format!("approved by {} at {}", a.by.join(", "), a.at),
        None => "allowed by policy".into(),
    };
    Deco {
        href: links.edge(e),
        title: format!("{} — {how}; entries {:?}", e.kind, e.entries),
        class: if approved {
            "edge approved"
        } else {
            "edge policy"
        },
        fill: "none",
        stroke: if approved { GREEN } else { GREY },
        width: if approved { 2.5 } else { 1.5 },
        dashed: !approved,
    }
}

/// Draw calls from the layout, turned into SVG elements.
struct Backend {
    decos: Vec<Deco>,
    out: String,
    max: Point,
    /// A node's group (with a link: `Some(true)`) is open until its label
    /// is drawn.
    open: Option<bool>,
}

impl Backend {
    fn grow(&mut self, p: Point) {
        self.max.x = self.max.x.max(p.x + 8.0);
        self.max.y = self.max.y.max(p.y + 8.0);
    }

    fn deco(&self, props: &Option<String>) -> Option<Deco> {
        props
            .as_deref()
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|i| self.decos.get(i))
            .cloned()
    }

    fn open_link(&mut self, d: &Deco) {
        let _ = write!(self.out, "<g class=\"{}\">", d.class);
        if let Some(h) = &d.href {
            let _ = write!(self.out, "<a href=\"{}\">", esc(h));
        }
        let _ = write!(self.out, "<title>{}</title>", esc(&d.title));
    }

    fn close_link(&mut self, d: &Deco) {
        if d.href.is_some() {
            self.out.push_str("</a>");
        }
        self.out.push_str("</g>");
    }
}

impl RenderBackend for Backend {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        self.grow(Point::new(xy.x + size.x, xy.y + size.y));
        let d = self.deco(&properties).unwrap_or_default();
        if properties.is_some() {
            self.open_link(&d);
            self.open = Some(d.href.is_some());
        }
        let _ = write!(
            self.out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"{}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>",
            xy.x,
            xy.y,
            size.x,
            size.y,
            look.rounded,
            if d.fill.is_empty() { "white" } else { d.fill },
            if d.stroke.is_empty() { "black" } else { d.stroke },
            if d.width == 0.0 { 1.0 } else { d.width },
        );
    }

    fn draw_line(&mut self, start: Point, stop: Point, _: &StyleAttr, _: Option<String>) {
        self.grow(start);
        self.grow(stop);
        let _ = write!(
            self.out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{GREY}\"/>",
            start.x, start.y, stop.x, stop.y
        );
    }

    fn draw_circle(&mut self, xy: Point, size: Point, _: &StyleAttr, _: Option<String>) {
        self.grow(Point::new(xy.x + size.x / 2.0, xy.y + size.y / 2.0));
        let _ = write!(
            self.out,
            "<ellipse cx=\"{:.1}\" cy=\"{:.1}\" rx=\"{:.1}\" ry=\"{:.1}\" fill=\"white\" stroke=\"{GREY}\"/>",
            xy.x,
            xy.y,
            size.x / 2.0,
            size.y / 2.0
        );
    }

    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        let lines: Vec<&str> = text.lines().collect();
        let n = lines.len().max(1) as f64;
        let fs = look.font_size as f64;
        let top = xy.y - (n - 1.0) * fs * 0.6;
        let _ = write!(
            self.out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-family=\"sans-serif\" font-size=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\" fill=\"#111827\" stroke=\"white\" stroke-width=\"3\" paint-order=\"stroke\">",
            xy.x, top, look.font_size
        );
        for (i, l) in lines.iter().enumerate() {
            let _ = write!(
                self.out,
                "<tspan x=\"{:.1}\" dy=\"{}\">{}</tspan>",
                xy.x,
                if i == 0 { 0.0 } else { fs * 1.2 },
                esc(l)
            );
        }
        self.out.push_str("</text>");
        // The node's group (and link) opened at its rectangle.
        if let Some(anchor) = self.open.take() {
            if anchor {
                self.out.push_str("</a>");
            }
            self.out.push_str("</g>");
        }
    }

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        _: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if path.len() < 2 {
            return;
        }
        for p in path {
            self.grow(p.0);
            self.grow(p.1);
        }
        let d = self.deco(&properties).unwrap_or(Deco {
            stroke: GREY,
            width: 1.5,
            dashed,
            ..Deco::default()
        });
        let mut p = format!(
            "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for q in path.iter().skip(2) {
            let _ = write!(p, " S {:.1} {:.1}, {:.1} {:.1}", q.0.x, q.0.y, q.1.x, q.1.y);
        }
        self.open_link(&d);
        let marker = if d.stroke == GREEN {
            "sk-head-ok"
        } else {
            "sk-head"
        };
        let _ = write!(
            self.out,
            "<path d=\"{p}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{}{}/>",
            d.stroke,
            d.width,
            if d.dashed {
                " stroke-dasharray=\"6,4\""
            } else {
                ""
            },
            if head.1 {
                format!(" marker-end=\"url(#{marker})\"")
            } else {
                String::new()
            }
        );
        // A wide transparent stroke makes the edge easy to click.
        let _ = write!(
            self.out,
            "<path d=\"{p}\" fill=\"none\" stroke=\"transparent\" stroke-width=\"10\"/>"
        );
        self.close_link(&d);
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// Renders `g` as an SVG element (no XML prolog, ready to inline).
/// An empty graph renders as a short note.
pub fn render(g: &Graph, links: &dyn Links) -> String {
    if g.nodes.is_empty() {
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"480\" height=\"40\" role=\"img\" aria-label=\"lineage graph\"><text x=\"8\" y=\"24\" font-family=\"sans-serif\" font-size=\"14\">No executed action matches these filters.</text></svg>".into();
    }
    let mut vg = VisualGraph::new(Orientation::LeftToRight);
    let mut decos = Vec::new();
    let mut handles = std::collections::HashMap::new();
    for n in &g.nodes {
        let label = node_label(n);
        let look = StyleAttr::new(
            layout::core::color::Color::fast("black"),
            2,
            None,
            if n.kind == "dataset" { 10 } else { 4 },
            13,
        );
        let size = layout::core::geometry::get_size_for_str(&label, 8);
        let size = Point::new(size.x + 24.0, size.y * 1.9 + 14.0);
        decos.push(node_deco(n, links));
        let el = Element::create_with_properties(
            ShapeKind::new_box(&label),
            look,
            Orientation::LeftToRight,
            size,
            (decos.len() - 1).to_string(),
        );
        handles.insert(n.id.clone(), vg.add_node(el));
    }
    for e in &g.edges {
        let (Some(&a), Some(&b)) = (handles.get(&e.from), handles.get(&e.to)) else {
            continue;
        };
        decos.push(edge_deco(e, links));
        let text = if e.kind == "ran" { "" } else { e.kind.as_str() };
        let look = StyleAttr::new(layout::core::color::Color::fast("black"), 2, None, 0, 12);
        let arrow = Arrow::with_properties(
            LineEndKind::None,
            LineEndKind::Arrow,
            if e.approved.is_some() {
                LineStyleKind::Normal
            } else {
                LineStyleKind::Dashed
            },
            text,
            &look,
            (decos.len() - 1).to_string(),
            &None,
            &None,
        );
        vg.add_edge(arrow, a, b);
    }
    let mut be = Backend {
        decos,
        out: String::new(),
        max: Point::new(0.0, 0.0),
        open: None,
    };
    vg.do_it(false, false, false, &mut be);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"lineage\" role=\"img\" aria-label=\"lineage graph\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\">\
         <defs><marker id=\"sk-head\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" refY=\"3.5\" orient=\"auto\"><polygon points=\"0 0, 10 3.5, 0 7\" fill=\"{GREY}\"/></marker>\
         <marker id=\"sk-head-ok\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" refY=\"3.5\" orient=\"auto\"><polygon points=\"0 0, 10 3.5, 0 7\" fill=\"{GREEN}\"/></marker></defs>{}</svg>",
        be.out,
        w = be.max.x,
        h = be.max.y,
    )
}
