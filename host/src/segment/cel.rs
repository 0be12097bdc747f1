//! The expression form of a condition, in CEL syntax (parsed by the
//! `cel-parser` crate of the cel-rust project), turned into the same tree as
//! the JSON form.
//!
//! What a condition may say: attributes by bare name; `&&`, `||`, `!`;
//! `==`, `!=`, `>`, `>=`, `<`, `<=` between an attribute and a literal (text,
//! number, `true`/`false`, `timestamp('2026-01-01T00:00:00Z')`) or a time
//! relative to now (`now - duration('168h')`); `name in ['a', 'b']`;
//! `name.contains('text')`; `exists(name)`; a bare attribute reads as
//! `name == true`. `now` names the clock, not an attribute.
//!
//! Syntax errors carry the parser's line and column. The parser keeps no
//! positions for a tree it accepts, so a construct PulseHub does not support
//! is placed at the first occurrence of its name in the expression.

use cel_parser::Parser;
use cel_parser::ast::operators;
use cel_parser::ast::{CallExpr, Expr, IdedExpr};
use cel_parser::reference::Val;

use super::condition::{Comparison, Condition, Operand};
use super::{DefinitionError, Position, duration};
use crate::model::update::Value;

/// Parses a condition written in CEL syntax.
pub fn parse(source: &str) -> Result<Condition, DefinitionError> {
    // The parser panics, instead of failing, on some malformed input (`1 +`,
    // `page_views >=`, `.`; cel-rust issues 191 and 194): such input is
    // refused as malformed at its end, where what is missing would go.
    let parsed = std::panic::catch_unwind(|| Parser::new().parse(source)).map_err(|_| {
        let line = source.split('\n').count().max(1);
        let column = source
            .rsplit('\n')
            .next()
            .map_or(0, |last| last.chars().count())
            + 1;
        DefinitionError {
            message: "the expression is incomplete or malformed".to_owned(),
            at: Position::Text { line, column },
        }
    })?;
    let expr = parsed.map_err(|errors| {
        let (message, (line, column)) = errors
            .errors
            .first()
            .map_or(("the expression does not parse".to_owned(), (1, 1)), |e| {
                (e.msg.clone(), e.pos)
            });
        DefinitionError {
            message,
            at: Position::Text {
                line: usize::try_from(line).unwrap_or(0).max(1),
                column: usize::try_from(column).unwrap_or(0).max(1),
            },
        }
    })?;
    Reader { source }.condition(&expr)
}

struct Reader<'s> {
    source: &'s str,
}

const COMPARISONS: [(&str, Comparison); 6] = [
    (operators::EQUALS, Comparison::Eq),
    (operators::NOT_EQUALS, Comparison::Ne),
    (operators::GREATER, Comparison::Gt),
    (operators::GREATER_EQUALS, Comparison::Gte),
    (operators::LESS, Comparison::Lt),
    (operators::LESS_EQUALS, Comparison::Lte),
];

impl Reader<'_> {
    fn condition(&self, e: &IdedExpr) -> Result<Condition, DefinitionError> {
        match &e.expr {
            Expr::Call(call) => self.call(e, call),
            Expr::Ident(name) if name != "now" => Ok(Condition::Compare {
                attribute: name.clone(),
                op: Comparison::Eq,
                operand: Operand::Value(Value::Boolean(true)),
            }),
            Expr::Select(select) => Err(self.selected(e, &select.field)),
            _ => Err(self.fault(e, "expected a condition on an attribute")),
        }
    }

    fn call(&self, e: &IdedExpr, call: &CallExpr) -> Result<Condition, DefinitionError> {
        let name = call.func_name.as_str();
        let args = call.args.as_slice();
        if let (Some((_, op)), [left, right]) = (COMPARISONS.iter().find(|(f, _)| *f == name), args)
        {
            return self.comparison(e, *op, left, right);
        }
        match (name, call.target.as_deref(), args) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, None, _) => {
                let mut terms = Vec::with_capacity(args.len());
                for arg in args {
                    match self.condition(arg)? {
                        // `a && b && c` arrives nested; keep it one list.
                        Condition::And(inner) if name == operators::LOGICAL_AND => terms.extend(inner),
                        Condition::Or(inner) if name == operators::LOGICAL_OR => terms.extend(inner),
                        term => terms.push(term),
                    }
                }
                Ok(if name == operators::LOGICAL_AND {
                    Condition::And(terms)
                } else {
                    Condition::Or(terms)
                })
            }
            (operators::LOGICAL_NOT, None, [inner]) => Ok(Condition::Not(Box::new(self.condition(inner)?))),
            (operators::IN, None, [attribute, list]) => {
                let attribute = self.attribute(attribute)?;
                let Expr::List(list) = &list.expr else {
                    return Err(self.fault(list, "`in` takes a list of values: ['a', 'b']"));
                };
                let values = list
                    .elements
                    .iter()
                    .map(|v| self.value(v))
                    .collect::<Result<_, _>>()?;
                Ok(Condition::In { attribute, values })
            }
            ("contains", Some(target), [text]) => {
                let attribute = self.attribute(target)?;
                match &text.expr {
                    Expr::Literal(Val::String(text)) => Ok(Condition::Contains {
                        attribute,
                        text: text.clone(),
                    }),
                    _ => Err(self.fault(text, "`contains` looks for literal text")),
                }
            }
            ("exists", None, [attribute]) => Ok(Condition::Exists {
                attribute: self.attribute(attribute)?,
            }),
            _ => Err(self.fault(
                e,
                format!(
                    "`{}` is not supported in a segment condition: use &&, ||, !, ==, !=, >, >=, <, \
                     <=, in, .contains(), exists()",
                    symbol(name)
                ),
            )),
        }
    }

    /// A comparison between an attribute and an operand, on either side.
    fn comparison(
        &self,
        e: &IdedExpr,
        op: Comparison,
        left: &IdedExpr,
        right: &IdedExpr,
    ) -> Result<Condition, DefinitionError> {
        let is_attribute = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name != "now");
        let (attribute, operand, op) = if is_attribute(left) {
            (left, right, op)
        } else if is_attribute(right) {
            (right, left, op.swapped())
        } else {
            return Err(self.no_attribute(e, left, right));
        };
        let operand = self.operand(operand)?;
        if matches!(operand, Operand::Now { .. }) && matches!(op, Comparison::Eq | Comparison::Ne) {
            return Err(self.fault(
                e,
                "a time relative to now is compared with >, >=, < or <=, not == or !=",
            ));
        }
        Ok(Condition::Compare {
            attribute: self.attribute(attribute)?,
            op,
            operand,
        })
    }

    /// Why neither side of a comparison is an attribute, at the side that
    /// is most likely meant as one.
    fn no_attribute(&self, e: &IdedExpr, left: &IdedExpr, right: &IdedExpr) -> DefinitionError {
        const OPERANDS: [&str; 5] = [
            "timestamp",
            "duration",
            operators::ADD,
            operators::SUBSTRACT,
            operators::NEGATE,
        ];
        for side in [left, right] {
            match &side.expr {
                Expr::Call(call) if !OPERANDS.contains(&call.func_name.as_str()) => {
                    return self.fault(
                        side,
                        format!(
                            "`{}` is not supported in a segment condition: compare an attribute, by name, with a value",
                            symbol(&call.func_name)
                        ),
                    );
                }
                Expr::Select(select) => return self.selected(side, &select.field),
                _ => {}
            }
        }
        self.fault(e, "a comparison needs an attribute on one side")
    }

    fn selected(&self, e: &IdedExpr, field: &str) -> DefinitionError {
        self.fault(
            e,
            format!("attributes are named directly (`{field}`), not selected from an object"),
        )
    }

    fn operand(&self, e: &IdedExpr) -> Result<Operand, DefinitionError> {
        match &e.expr {
            Expr::Ident(name) if name == "now" => Ok(Operand::Now { offset_ms: 0 }),
            Expr::Call(call)
                if call.func_name == operators::ADD || call.func_name == operators::SUBSTRACT =>
            {
                let [now, span] = call.args.as_slice() else {
                    return Err(
                        self.fault(e, "expected now + duration('…') or now - duration('…')")
                    );
                };
                if !matches!(&now.expr, Expr::Ident(name) if name == "now") {
                    return Err(self.fault(
                        e,
                        "arithmetic is only `now + duration('…')` or `now - duration('…')`",
                    ));
                }
                let offset_ms = self.duration(span)?;
                Ok(Operand::Now {
                    offset_ms: if call.func_name == operators::SUBSTRACT {
                        -offset_ms
                    } else {
                        offset_ms
                    },
                })
            }
            _ => self.value(e).map(Operand::Value),
        }
    }

    fn duration(&self, e: &IdedExpr) -> Result<i64, DefinitionError> {
        match &e.expr {
            Expr::Call(call) if call.func_name == "duration" && call.target.is_none() => {
                match call.args.as_slice() {
                    [
                        IdedExpr {
                            expr: Expr::Literal(Val::String(text)),
                            ..
                        },
                    ] => duration::parse(text).map_err(|message| self.fault(e, message)),
                    _ => Err(self.fault(e, "duration takes literal text: duration('168h')")),
                }
            }
            _ => Err(self.fault(e, "expected duration('…') after now")),
        }
    }

    fn value(&self, e: &IdedExpr) -> Result<Value, DefinitionError> {
        match &e.expr {
            Expr::Literal(Val::String(text)) => Ok(Value::Text(text.clone())),
            Expr::Literal(Val::Boolean(b)) => Ok(Value::Boolean(*b)),
            Expr::Literal(Val::Int(i)) => Ok(Value::Integer(*i)),
            Expr::Literal(Val::UInt(u)) => i64::try_from(*u)
                .map(Value::Integer)
                .map_err(|_| self.fault(e, format!("{u} is out of range"))),
            Expr::Literal(Val::Double(f)) => Ok(Value::Float(*f)),
            Expr::Call(call) if call.func_name == "timestamp" && call.target.is_none() => match call.args.as_slice() {
                [IdedExpr {
                    expr: Expr::Literal(Val::String(text)),
                    ..
                }] => super::timestamp(text)
                    .map(Value::Timestamp)
                    .map_err(|message| self.fault(e, message)),
                _ => Err(self.fault(e, "timestamp takes literal RFC 3339 text")),
            },
            _ => Err(self.fault(
                e,
                "expected a value: text, a number, true, false, timestamp('…') or now - duration('…')",
            )),
        }
    }

    fn attribute(&self, e: &IdedExpr) -> Result<String, DefinitionError> {
        match &e.expr {
            Expr::Ident(name) if name != "now" => Ok(name.clone()),
            _ => Err(self.fault(e, "expected an attribute name")),
        }
    }

    /// An error at the first occurrence of the expression's name in the
    /// source (see the module documentation).
    fn fault(&self, e: &IdedExpr, message: impl Into<String>) -> DefinitionError {
        let offset = needle(e)
            .and_then(|needle| self.source.find(needle.as_str()))
            .unwrap_or(0);
        let before = &self.source[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        DefinitionError {
            message: message.into(),
            at: Position::Text { line, column },
        }
    }
}

/// The text an expression is most likely written with.
fn needle(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Call(call) => match (
            call.target.as_deref(),
            call.func_name.starts_with(['_', '!', '@', '-']),
        ) {
            (Some(target), _) => needle(target),
            (None, true) => Some(symbol(&call.func_name).to_owned()),
            (None, false) => Some(call.func_name.clone()),
        },
        Expr::Select(select) => needle(&select.operand),
        Expr::Literal(Val::String(text)) => Some(text.clone()),
        Expr::Literal(Val::Int(i)) => Some(i.to_string()),
        Expr::List(_) => Some("[".to_owned()),
        Expr::Map(_) => Some("{".to_owned()),
        _ => None,
    }
}

/// An operator's symbol from the parser's function name: `_+_` is `+`.
fn symbol(name: &str) -> &str {
    name.trim_matches(|c| c == '_' || c == '@')
}
