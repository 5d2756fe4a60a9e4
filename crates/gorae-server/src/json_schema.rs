//! `response_format: {"type": "json_schema"}`: a JSON Schema compiled into the checks that
//! [`crate::json_guard::JsonPrefix`] applies while it reads the output, so constrained decoding
//! only ever writes prefixes of a document that conforms to the schema.
//!
//! The supported subset is what OpenAI's structured outputs and pydantic's generated schemas
//! use: `type` (one or a list), `properties`, `required`, `additionalProperties`, `items`,
//! `minItems`, `maxItems`, `enum` and `const` of scalars, `anyOf`/`oneOf` whose alternatives are
//! told apart by their first character (a different JSON type each: `Optional[Model]` is
//! `anyOf: [{$ref}, {type: null}]`), `allOf` of one schema, and `$ref` into `$defs` or
//! `definitions` (recursion included). Annotations (`title`, `description`, ...) are ignored.
//! Anything else, such as `pattern` or `format`, is refused when the request arrives: a keyword
//! the decoder cannot enforce would make the output's conformance a promise it does not keep.
//!
//! Objects are written with their schema's properties only (each at most once, any order),
//! all required ones included: a document without extra keys conforms whatever
//! `additionalProperties` says. An object schema without `properties` takes any keys.

use serde_json::{Map, Value};
use std::collections::HashMap;

/// Most properties one object schema may list (the seen ones are a 64-bit mask).
pub const MAX_PROPERTIES: usize = 64;
/// Most `enum` values one schema may list (the candidates still matching are a 64-bit mask).
pub const MAX_LITERALS: usize = 64;
/// Most nodes a compiled schema may hold: a bound on the work a hostile schema can cause.
const MAX_NODES: usize = 4096;
/// Deepest nesting of subschemas compiled (refs are compiled once, so recursion stops there).
const MAX_DEPTH: usize = 64;

pub(crate) const T_OBJECT: u8 = 1;
pub(crate) const T_ARRAY: u8 = 2;
pub(crate) const T_STRING: u8 = 4;
/// Any number, integers included.
pub(crate) const T_NUMBER: u8 = 8;
/// Integers only (no fraction, no exponent).
pub(crate) const T_INTEGER: u8 = 16;
pub(crate) const T_BOOLEAN: u8 = 32;
pub(crate) const T_NULL: u8 = 64;
const T_ANY: u8 = 127;

/// The node every unconstrained value uses (an empty schema, `true`, a free object's values).
pub(crate) const ANY: usize = 0;

/// What one value may be.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The JSON types allowed (`T_*` bits).
    pub types: u8,
    /// For objects: the listed properties, or `None` for any keys.
    pub object: Option<Properties>,
    /// For a free object (`object` is `None`): the schema of every value.
    pub values: usize,
    /// For arrays: the schema of every element.
    pub items: usize,
    pub min_items: u32,
    pub max_items: u32,
    /// `enum`/`const`: the only texts the value may have, as compact JSON.
    pub literals: Option<Vec<String>>,
}

impl Node {
    fn any() -> Node {
        Node {
            types: T_ANY,
            object: None,
            values: ANY,
            items: ANY,
            min_items: 0,
            max_items: u32::MAX,
            literals: None,
        }
    }
}

/// An object schema's properties: each key as it is written in JSON (escaped, no quotes) and the
/// node of its value; `required` has bit `i` for property `i`.
#[derive(Debug, Clone)]
pub(crate) struct Properties {
    pub keys: Vec<(String, usize)>,
    pub required: u64,
}

/// A compiled schema (see the module docs). The root is always an object schema.
#[derive(Debug)]
pub struct Schema {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: usize,
}

impl Schema {
    /// Compiles `schema`; the error says which keyword or value is not supported, and where.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        let mut c = Compiler {
            doc: schema,
            nodes: vec![Node::any()],
            refs: HashMap::new(),
        };
        let root = c.node(schema, "#", 0)?;
        let n = &c.nodes[root];
        if n.types != T_OBJECT {
            return Err("the schema's root must be an object ('type': 'object')".into());
        }
        Ok(Schema {
            nodes: c.nodes,
            root,
        })
    }
}

struct Compiler<'a> {
    doc: &'a Value,
    nodes: Vec<Node>,
    /// `$ref` targets compiled so far (or being compiled: recursion points back to them).
    refs: HashMap<String, usize>,
}

/// Keywords that only describe a schema and never constrain the value.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
    "strict",
];

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> Result<usize, String> {
        if self.nodes.len() >= MAX_NODES {
            return Err(format!(
                "the schema is too large (over {MAX_NODES} subschemas)"
            ));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn node(&mut self, s: &Value, at: &str, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the schema nests deeper than {MAX_DEPTH} levels"));
        }
        let o = match s {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => return Err(format!("{at}: the schema 'false' allows no value")),
            Value::Object(o) => o,
            _ => return Err(format!("{at}: a schema must be an object or a boolean")),
        };
        if let Some(r) = o.get("$ref") {
            if o.keys()
                .any(|k| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(format!(
                    "{at}: '$ref' beside other constraints is not supported"
                ));
            }
            let r = r
                .as_str()
                .ok_or_else(|| format!("{at}: '$ref' must be a string"))?;
            return self.reference(r, at, depth);
        }
        for k in o.keys() {
            let known = matches!(
                k.as_str(),
                "type"
                    | "properties"
                    | "required"
                    | "additionalProperties"
                    | "items"
                    | "minItems"
                    | "maxItems"
                    | "enum"
                    | "const"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
            );
            if !known && !ANNOTATIONS.contains(&k.as_str()) {
                return Err(format!(
                    "{at}: the keyword '{k}' is not supported in response_format json_schema"
                ));
            }
        }
        if let Some(all) = o.get("allOf") {
            match all.as_array().map(Vec::as_slice) {
                Some([one]) if o.len() == 1 || only_annotations_besides(o, "allOf") => {
                    return self.node(one, &format!("{at}/allOf/0"), depth + 1);
                }
                _ => return Err(format!("{at}: 'allOf' is supported with one schema only")),
            }
        }
        let alternatives = ["anyOf", "oneOf"]
            .iter()
            .find_map(|k| o.get(*k).map(|v| (*k, v)));
        if let Some((k, alts)) = alternatives {
            if o.keys()
                .any(|x| x != k && !ANNOTATIONS.contains(&x.as_str()))
            {
                return Err(format!(
                    "{at}: '{k}' beside other constraints is not supported"
                ));
            }
            let alts = alts
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{at}: '{k}' must be a non-empty list"))?;
            let mut ids = Vec::with_capacity(alts.len());
            for (i, a) in alts.iter().enumerate() {
                ids.push(self.node(a, &format!("{at}/{k}/{i}"), depth + 1)?);
            }
            return self.merge(&ids, at);
        }
        let mut node = Node::any();
        if let Some(t) = o.get("type") {
            node.types = types_of(t).ok_or_else(|| format!("{at}: unknown 'type' {t}"))?;
        }
        if let Some(v) = o.get("const") {
            node.literals = Some(vec![literal(v, &format!("{at}/const"))?]);
        } else if let Some(v) = o.get("enum") {
            let vals = v
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| format!("{at}: 'enum' must be a non-empty list"))?;
            let lits = vals
                .iter()
                .map(|v| literal(v, &format!("{at}/enum")))
                .collect::<Result<Vec<_>, _>>()?;
            if lits.len() > MAX_LITERALS {
                return Err(format!(
                    "{at}: more than {MAX_LITERALS} 'enum' values are not supported"
                ));
            }
            node.literals = Some(lits);
        }
        if let Some(lits) = &mut node.literals {
            // A literal must also have an allowed type.
            let types = node.types;
            lits.retain(|l| literal_type(l) & types != 0);
            if lits.is_empty() {
                return Err(format!(
                    "{at}: no 'enum'/'const' value has the schema's type"
                ));
            }
            node.types = lits.iter().fold(0, |t, l| t | literal_type(l));
            return self.push(node);
        }
        let mut next = Node::any();
        next.types = node.types;
        if node.types & T_OBJECT != 0 {
            self.object(o, &mut next, at, depth)?;
        }
        if node.types & T_ARRAY != 0 {
            if let Some(items) = o.get("items") {
                next.items = self.node(items, &format!("{at}/items"), depth + 1)?;
            }
            let count = |k: &str| -> Result<Option<u32>, String> {
                match o.get(k) {
                    None => Ok(None),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(Some)
                        .ok_or_else(|| format!("{at}: '{k}' must be a non-negative integer")),
                }
            };
            next.min_items = count("minItems")?.unwrap_or(0);
            next.max_items = count("maxItems")?.unwrap_or(u32::MAX);
            if next.min_items > next.max_items {
                return Err(format!("{at}: 'minItems' exceeds 'maxItems'"));
            }
        }
        self.push(next)
    }

    fn object(
        &mut self,
        o: &Map<String, Value>,
        node: &mut Node,
        at: &str,
        depth: usize,
    ) -> Result<(), String> {
        let required: Vec<&str> = match o.get("required") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| format!("{at}: 'required' must list strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{at}: 'required' must be a list")),
        };
        let additional = match o.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Some(ANY),
            Some(Value::Bool(false)) => None,
            Some(s) => Some(self.node(s, &format!("{at}/additionalProperties"), depth + 1)?),
        };
        let Some(props) = o.get("properties") else {
            if !required.is_empty() {
                return Err(format!(
                    "{at}: 'required' names properties the schema does not list"
                ));
            }
            match additional {
                Some(values) => node.values = values,
                // No keys at all: the empty object only.
                None => {
                    node.object = Some(Properties {
                        keys: Vec::new(),
                        required: 0,
                    })
                }
            }
            return Ok(());
        };
        let props = props
            .as_object()
            .ok_or_else(|| format!("{at}: 'properties' must be an object"))?;
        if props.len() > MAX_PROPERTIES {
            return Err(format!(
                "{at}: more than {MAX_PROPERTIES} properties in one object are not supported"
            ));
        }
        let mut keys = Vec::with_capacity(props.len());
        for (name, s) in props {
            let id = self.node(s, &format!("{at}/properties/{name}"), depth + 1)?;
            let quoted = serde_json::to_string(name).map_err(|e| e.to_string())?;
            keys.push((quoted[1..quoted.len() - 1].to_string(), id));
        }
        let mut mask = 0u64;
        for r in required {
            let i = props
                .keys()
                .position(|k| k == r)
                .ok_or_else(|| format!("{at}: required property '{r}' is not in 'properties'"))?;
            mask |= 1 << i;
        }
        node.object = Some(Properties {
            keys,
            required: mask,
        });
        Ok(())
    }

    fn reference(&mut self, r: &str, at: &str, depth: usize) -> Result<usize, String> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let target = resolve(self.doc, r).ok_or_else(|| {
            format!("{at}: '$ref' {r:?} must point into this schema ('#', '#/$defs/...')")
        })?;
        // Reserve the node first: a schema that refers to itself reaches this id again.
        let id = self.push(Node::any())?;
        self.refs.insert(r.to_string(), id);
        let body = self.node(target, r, depth + 1)?;
        self.nodes[id] = self.nodes[body].clone();
        Ok(id)
    }

    /// One node for alternatives of different JSON types.
    fn merge(&mut self, ids: &[usize], at: &str) -> Result<usize, String> {
        let mut out = Node::any();
        out.types = 0;
        let mut literals: Option<Vec<String>> = None;
        let mut free_scalars = 0u8;
        for &id in ids {
            let n = self.nodes[id].clone();
            if n.types & out.types & (T_OBJECT | T_ARRAY) != 0 {
                return Err(format!(
                    "{at}: alternatives must differ in JSON type (two allow {})",
                    if n.types & out.types & T_OBJECT != 0 {
                        "objects"
                    } else {
                        "arrays"
                    }
                ));
            }
            if n.types & T_OBJECT != 0 {
                out.object = n.object.clone();
                out.values = n.values;
            }
            if n.types & T_ARRAY != 0 {
                out.items = n.items;
                out.min_items = n.min_items;
                out.max_items = n.max_items;
            }
            match n.literals {
                Some(l) => literals.get_or_insert_with(Vec::new).extend(l),
                None => free_scalars |= n.types & !(T_OBJECT | T_ARRAY),
            }
            out.types |= n.types;
        }
        if let Some(mut lits) = literals {
            // Literals of a type that another alternative allows freely are redundant; a
            // `null` or boolean alternative becomes literals itself. Otherwise literals and a
            // free value of the same type cannot be told apart by the decoder.
            lits.retain(|l| literal_type(l) & free_scalars == 0);
            for (bit, words) in [(T_NULL, &["null"][..]), (T_BOOLEAN, &["true", "false"][..])] {
                if free_scalars & bit != 0 {
                    lits.extend(words.iter().map(|w| w.to_string()));
                    free_scalars &= !bit;
                }
            }
            if lits.len() > MAX_LITERALS {
                return Err(format!(
                    "{at}: more than {MAX_LITERALS} values are not supported"
                ));
            }
            if free_scalars != 0 || out.types & (T_OBJECT | T_ARRAY) != 0 {
                return Err(format!(
                    "{at}: 'enum'/'const' alternatives beside free strings, numbers, objects or \
                     arrays are not supported"
                ));
            }
            out.literals = Some(lits);
        }
        self.push(out)
    }
}

fn only_annotations_besides(o: &Map<String, Value>, key: &str) -> bool {
    o.keys()
        .all(|k| k == key || ANNOTATIONS.contains(&k.as_str()))
}

fn types_of(t: &Value) -> Option<u8> {
    let one = |s: &str| {
        Some(match s {
            "object" => T_OBJECT,
            "array" => T_ARRAY,
            "string" => T_STRING,
            "number" => T_NUMBER | T_INTEGER,
            "integer" => T_INTEGER,
            "boolean" => T_BOOLEAN,
            "null" => T_NULL,
            _ => return None,
        })
    };
    match t {
        Value::String(s) => one(s),
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .try_fold(0u8, |acc, v| Some(acc | one(v.as_str()?)?)),
        _ => None,
    }
}

/// The compact JSON text of a scalar `enum`/`const` value.
fn literal(v: &Value, at: &str) -> Result<String, String> {
    match v {
        Value::Object(_) | Value::Array(_) => Err(format!(
            "{at}: only strings, numbers, booleans and null are supported as values"
        )),
        _ => serde_json::to_string(v).map_err(|e| e.to_string()),
    }
}

/// The type bit of a literal's text.
fn literal_type(l: &str) -> u8 {
    match l.as_bytes().first() {
        Some(b'"') => T_STRING,
        Some(b't' | b'f') => T_BOOLEAN,
        Some(b'n') => T_NULL,
        _ if l.contains(['.', 'e', 'E']) => T_NUMBER,
        _ => T_NUMBER | T_INTEGER,
    }
}

/// The subschema a local JSON pointer (`#`, `#/$defs/A`) names.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    let path = r.strip_prefix('#')?;
    if path.is_empty() {
        return Some(doc);
    }
    let mut v = doc;
    for part in path.strip_prefix('/')?.split('/') {
        let part = part.replace("~1", "/").replace("~0", "~");
        v = match v {
            Value::Object(o) => o.get(&part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Where a value being read stands against its schema: the part of [`crate::json_guard::JsonPrefix`]'s
/// state that the schema adds. Every field but the schema is plain data, so the per-token copies
/// of the masking loop only copy bytes.
#[derive(Debug)]
pub(crate) struct Track {
    schema: std::sync::Arc<Schema>,
    /// One frame per open container, innermost last.
    frames: Vec<Frame>,
    /// The scalar being written, when its node lists its possible texts.
    lit: Option<Lit>,
    /// The number being written must be an integer.
    integer_only: bool,
}

#[derive(Debug, Clone, Copy)]
enum Frame {
    Object {
        node: usize,
        /// Properties written so far (bit per property).
        seen: u64,
        /// While a key is written: the properties whose key starts with its bytes so far.
        cands: u64,
        key_len: usize,
        /// The node of the value after the last key.
        value: usize,
    },
    Array {
        node: usize,
        count: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Lit {
    node: usize,
    /// The literals whose text starts with the value's bytes so far.
    cands: u64,
    len: usize,
}

impl Clone for Track {
    fn clone(&self) -> Self {
        Track {
            schema: std::sync::Arc::clone(&self.schema),
            frames: self.frames.clone(),
            lit: self.lit,
            integer_only: self.integer_only,
        }
    }

    fn clone_from(&mut self, src: &Self) {
        if !std::sync::Arc::ptr_eq(&self.schema, &src.schema) {
            self.schema = std::sync::Arc::clone(&src.schema);
        }
        self.frames.clone_from(&src.frames);
        self.lit = src.lit;
        self.integer_only = src.integer_only;
    }
}

/// The `T_*` bit of the value a first character starts.
fn type_of_start(c: char) -> u8 {
    match c {
        '{' => T_OBJECT,
        '[' => T_ARRAY,
        '"' => T_STRING,
        't' | 'f' => T_BOOLEAN,
        'n' => T_NULL,
        _ => T_NUMBER | T_INTEGER,
    }
}

impl Track {
    pub(crate) fn new(schema: std::sync::Arc<Schema>) -> Track {
        Track {
            schema,
            frames: Vec::new(),
            lit: None,
            integer_only: false,
        }
    }

    fn node(&self, id: usize) -> &Node {
        &self.schema.nodes[id]
    }

    /// A value starts with `c` (syntax already checked).
    pub(crate) fn value_start(&mut self, c: char) -> bool {
        let expect = match self.frames.last_mut() {
            None => self.schema.root,
            Some(Frame::Object { value, .. }) => *value,
            Some(Frame::Array { node, count }) => {
                *count += 1;
                let n = &self.schema.nodes[*node];
                if *count > n.max_items {
                    return false;
                }
                n.items
            }
        };
        let n = self.node(expect);
        let (types, n_literals) = (n.types, n.literals.as_ref().map(Vec::len));
        let ty = type_of_start(c);
        if types & ty == 0 {
            return false;
        }
        self.integer_only = ty & T_INTEGER != 0 && types & T_NUMBER == 0;
        if let Some(n_literals) = n_literals {
            self.lit = Some(Lit {
                node: expect,
                cands: all(n_literals),
                len: 0,
            });
            return self.scalar_char(c);
        }
        match c {
            '{' => self.frames.push(Frame::Object {
                node: expect,
                seen: 0,
                cands: 0,
                key_len: 0,
                value: ANY,
            }),
            '[' => self.frames.push(Frame::Array {
                node: expect,
                count: 0,
            }),
            _ => {}
        }
        true
    }

    /// A character of a scalar value after its first (string content and closing quote,
    /// number digits, letters of true/false/null).
    pub(crate) fn scalar_char(&mut self, c: char) -> bool {
        let Track {
            schema,
            lit,
            integer_only,
            ..
        } = self;
        if let Some(lit) = lit {
            let Some(texts) = &schema.nodes[lit.node].literals else {
                return false;
            };
            return narrow(
                texts.iter().map(String::as_str),
                &mut lit.cands,
                &mut lit.len,
                c,
            );
        }
        !(*integer_only && matches!(c, '.' | 'e' | 'E'))
    }

    /// The scalar value is complete.
    pub(crate) fn scalar_end(&mut self) -> bool {
        let Some(lit) = self.lit.take() else {
            return true;
        };
        let Some(texts) = &self.schema.nodes[lit.node].literals else {
            return false;
        };
        whole(texts.iter().map(String::as_str), lit.cands, lit.len).is_some()
    }

    fn props(&self, node: usize) -> Option<&Properties> {
        self.node(node).object.as_ref()
    }

    /// The opening quote of a key.
    pub(crate) fn key_start(&mut self) -> bool {
        let Track { schema, frames, .. } = self;
        let Some(Frame::Object {
            node,
            seen,
            cands,
            key_len,
            ..
        }) = frames.last_mut()
        else {
            return false;
        };
        *key_len = 0;
        match &schema.nodes[*node].object {
            None => true,
            Some(p) => {
                *cands = all(p.keys.len()) & !*seen;
                *cands != 0
            }
        }
    }

    /// A character of a key (escapes as written).
    pub(crate) fn key_char(&mut self, c: char) -> bool {
        let Track { schema, frames, .. } = self;
        let Some(Frame::Object {
            node,
            cands,
            key_len,
            ..
        }) = frames.last_mut()
        else {
            return false;
        };
        match &schema.nodes[*node].object {
            None => true,
            Some(p) => narrow(p.keys.iter().map(|(k, _)| k.as_str()), cands, key_len, c),
        }
    }

    /// The closing quote of a key.
    pub(crate) fn key_end(&mut self) -> bool {
        let Track { schema, frames, .. } = self;
        let Some(Frame::Object {
            node,
            seen,
            cands,
            key_len,
            value,
        }) = frames.last_mut()
        else {
            return false;
        };
        let n = &schema.nodes[*node];
        let Some(p) = &n.object else {
            *value = n.values;
            return true;
        };
        match whole(p.keys.iter().map(|(k, _)| k.as_str()), *cands, *key_len) {
            Some(i) => {
                *seen |= 1 << i;
                *value = p.keys[i].1;
                true
            }
            None => false,
        }
    }

    /// A comma after a member or element: another must be possible.
    pub(crate) fn comma(&mut self) -> bool {
        match self.frames.last() {
            Some(&Frame::Object { node, seen, .. }) => match self.props(node) {
                None => true,
                Some(p) => all(p.keys.len()) & !seen != 0,
            },
            Some(&Frame::Array { node, count }) => count < self.node(node).max_items,
            None => false,
        }
    }

    /// A closing bracket: the container must be complete.
    pub(crate) fn close(&mut self) -> bool {
        let ok = match self.frames.last() {
            Some(&Frame::Object { node, seen, .. }) => self
                .props(node)
                .is_none_or(|p| seen & p.required == p.required),
            Some(&Frame::Array { node, count }) => count >= self.node(node).min_items,
            None => false,
        };
        if ok {
            self.frames.pop();
        }
        ok
    }
}

/// Narrows `cands` (bit `i`: `texts[i]` still matches what was written) by the UTF-8 bytes
/// of `c`, written from byte `*len` on; whether a candidate is left. Keys and `enum` values
/// are matched this way.
fn narrow<'t>(
    texts: impl Iterator<Item = &'t str> + Clone,
    cands: &mut u64,
    len: &mut usize,
    c: char,
) -> bool {
    let mut buf = [0u8; 4];
    for &b in c.encode_utf8(&mut buf).as_bytes() {
        for (i, t) in texts.clone().enumerate() {
            if t.as_bytes().get(*len) != Some(&b) {
                *cands &= !(1u64 << i);
            }
        }
        *len += 1;
    }
    *cands != 0
}

/// The candidate of `cands` that is exactly the `len` bytes written.
fn whole<'t>(texts: impl Iterator<Item = &'t str>, cands: u64, len: usize) -> Option<usize> {
    texts
        .enumerate()
        .find(|(i, t)| cands & (1 << i) != 0 && t.len() == len)
        .map(|(i, _)| i)
}

/// The mask of the first `n` bits.
fn all(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_guard::JsonPrefix;
    use serde_json::json;
    use std::sync::Arc;

    fn person() -> Value {
        json!({
            "$defs": {
                "Address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                    "required": ["city", "zip"],
                    "additionalProperties": false
                }
            },
            "title": "Person",
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "full name"},
                "age": {"type": "integer"},
                "score": {"type": "number"},
                "ok": {"type": "boolean"},
                "kind": {"enum": ["a", "bc", 7, null]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
                "addr": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
                "extra": {"type": "object"}
            },
            "required": ["name", "age", "kind"],
            "additionalProperties": false
        })
    }

    fn prefix(schema: &Value) -> JsonPrefix {
        JsonPrefix::with_schema(Some(Arc::new(Schema::compile(schema).unwrap())))
    }

    fn accepts(schema: &Value, s: &str) -> bool {
        prefix(schema).push_str(s)
    }

    fn complete(schema: &Value, s: &str) -> bool {
        let mut p = prefix(schema);
        p.push_str(s) && p.is_done()
    }

    #[test]
    fn conforming_documents_are_complete() {
        let s = person();
        for doc in [
            r#"{"name": "x", "age": 3, "kind": "bc"}"#,
            r#"{"kind":null,"age":-12,"name":"\u00e9\"q"}"#,
            r#"{"name": "x", "age": 0, "kind": 7, "score": -1.5e3, "ok": false}"#,
            r#"{"name": "x", "age": 3, "kind": "a", "tags": ["p"], "addr": null}"#,
            r#"{"addr": {"zip": 10115, "city": "Berlin"}, "name": "", "age": 1, "kind": "a"}"#,
            r#"{"name": "x", "age": 3, "kind": "a", "extra": {"any": [1, {"b": null}]}}"#,
        ] {
            assert!(complete(&s, doc), "{doc}");
        }
    }

    #[test]
    fn nonconforming_text_is_refused_where_it_goes_wrong() {
        let s = person();
        for (ok, bad) in [
            // A required property is missing when the object closes.
            (r#"{"name": "x", "age": 3"#, "}"),
            // Wrong types.
            (r#"{"age": "#, "\""),
            (r#"{"name": "#, "1"),
            (r#"{"ok": "#, "n"),
            // An integer gets no fraction or exponent.
            (r#"{"age": 3"#, "."),
            (r#"{"age": 3"#, "e"),
            // Keys the schema does not list, and a key twice.
            (r#"{"#, "\"z"),
            (r#"{"name": "x", "#, "\"name\""),
            // Values outside the enum.
            (r#"{"kind": "b"#, "\""),
            (r#"{"kind": "#, "8"),
            (r#"{"kind": 7"#, "0"),
            (r#"{"kind": "#, "t"),
            // Array bounds: at least one tag, at most two.
            (r#"{"tags": ["#, "]"),
            (r#"{"tags": ["a", "b""#, ","),
            (r#"{"tags": [1"#, ""),
            // The nested object's own rules.
            (r#"{"addr": {"city": "B""#, "}"),
            (r#"{"addr": "#, "["),
            (r#"{"addr": {"city": "B", "zip": 1"#, ","),
        ] {
            if bad.is_empty() {
                assert!(!accepts(&s, ok), "{ok:?} accepted");
                continue;
            }
            assert!(accepts(&s, ok), "{ok:?} refused");
            assert!(
                !accepts(&s, &format!("{ok}{bad}")),
                "{ok:?} + {bad:?} accepted"
            );
        }
        // All properties written: no comma may follow (it would have no key to go on with).
        let full = r#"{"name":"","age":1,"score":1,"ok":true,"kind":null,"tags":["a"],"addr":null,"extra":{}"#;
        assert!(accepts(&s, full));
        assert!(!accepts(&s, &format!("{full},")));
        assert!(complete(&s, &format!("{full}}}")));
    }

    #[test]
    fn unsupported_schemas_are_refused_with_the_reason() {
        for (schema, says) in [
            (json!({"type": "array"}), "root must be an object"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}),
                "'pattern'",
            ),
            (
                json!({"type": "object", "properties": {"a": {"format": "date-time"}}}),
                "'format'",
            ),
            (
                json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "object"}, {"type": "object"}]}}}),
                "differ in JSON type",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "http://x/y"}}}),
                "must point into",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}),
                "must point into",
            ),
            (
                json!({"type": "object", "required": ["a"], "properties": {}}),
                "'a'",
            ),
            (
                json!({"type": "object", "properties": {"a": false}}),
                "allows no value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"enum": [[1]]}}}),
                "only strings",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "enum": [1.5]}}}),
                "has the schema's type",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 1}}}),
                "minItems",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "strin"}}}),
                "unknown 'type'",
            ),
        ] {
            let e = Schema::compile(&schema)
                .err()
                .unwrap_or_else(|| panic!("{schema} compiled"));
            assert!(e.contains(says), "{schema}: {e}");
        }
    }

    #[test]
    fn recursive_references_nest() {
        let tree = json!({
            "type": "object",
            "properties": {
                "v": {"type": "integer"},
                "kids": {"type": "array", "items": {"$ref": "#"}}
            },
            "required": ["v"]
        });
        assert!(complete(
            &tree,
            r#"{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4}]}]}"#
        ));
        assert!(!accepts(&tree, r#"{"v": 1, "kids": [{}"#));
    }

    /// An independent check of a parsed document against the supported subset.
    fn conforms(v: &Value, s: &Value, root: &Value) -> bool {
        let s = match s {
            Value::Bool(b) => return *b,
            Value::Object(o) => o,
            _ => return false,
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            return conforms(v, resolve(root, r).unwrap(), root);
        }
        if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            return alts.iter().any(|a| conforms(v, a, root));
        }
        if let Some(c) = s.get("const") {
            return v == c;
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return e.contains(v);
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0), // `-0` parses as a float
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        match v {
            Value::Object(m) => {
                let props = s.get("properties").and_then(Value::as_object);
                let required = s.get("required").and_then(Value::as_array);
                required
                    .into_iter()
                    .flatten()
                    .all(|r| m.contains_key(r.as_str().unwrap()))
                    && m.iter().all(|(k, x)| match props {
                        Some(p) => p.get(k).is_some_and(|ps| conforms(x, ps, root)),
                        None => true,
                    })
            }
            Value::Array(a) => {
                let n = a.len() as u64;
                s.get("minItems")
                    .and_then(Value::as_u64)
                    .is_none_or(|m| n >= m)
                    && s.get("maxItems")
                        .and_then(Value::as_u64)
                        .is_none_or(|m| n <= m)
                    && a.iter()
                        .all(|x| s.get("items").is_none_or(|is| conforms(x, is, root)))
            }
            _ => true,
        }
    }

    /// Random walks through the characters the prefix allows: a walk never reaches a state with
    /// no way on (constrained decoding would have no token to pick), and every walk that
    /// finishes parses and conforms to the schema.
    #[test]
    fn random_walks_never_dead_end_and_finish_conforming() {
        let alphabet: Vec<char> = "{}[],:\" -.0123456789eEabcdefgiklmnoprstuvwxyz\\"
            .chars()
            .collect();
        let closers: Vec<char> = "\"}],0".chars().collect();
        for schema in [
            person(),
            json!({"type": "object", "properties": {"t": {"$ref": "#"}, "n": {"type": ["integer", "null"]}}, "required": ["n"]}),
        ] {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut rand = move |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            let mut finished = 0;
            for _ in 0..300 {
                let mut p = prefix(&schema);
                let mut text = String::new();
                for _ in 0..600 {
                    let allowed: Vec<char> = alphabet
                        .iter()
                        .copied()
                        .filter(|&c| p.clone().push(c))
                        .collect();
                    assert!(!allowed.is_empty(), "dead end after {text:?}");
                    let close: Vec<char> = allowed
                        .iter()
                        .copied()
                        .filter(|c| closers.contains(c))
                        .collect();
                    let c = if !close.is_empty() && rand(2) == 0 {
                        close[rand(close.len())]
                    } else {
                        allowed[rand(allowed.len())]
                    };
                    assert!(p.push(c));
                    text.push(c);
                    if p.is_done() {
                        break;
                    }
                }
                if p.is_done() {
                    finished += 1;
                    let v: Value =
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                    assert!(conforms(&v, &schema, &schema), "{text} does not conform");
                }
            }
            assert!(finished > 30, "only {finished} walks finished");
        }
    }
}
