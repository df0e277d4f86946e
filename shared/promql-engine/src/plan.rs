//! The first phase: the parser's AST turned into the evaluator's tree, with every construct this
//! engine does not evaluate rejected by name, and every selector listed with the time window it
//! needs (offset, `@`, range, lookback and the query's start..end considered).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::Labels as ParserLabels;
use promql_parser::parser::{
    token, AtModifier, BinModifier, Expr, LabelModifier, Offset, VectorMatchCardinality,
    VectorSelector,
};
use regex::Regex;

use crate::error::QueryError;
use crate::labels::is_valid_label_name;
use crate::matcher::{selector_matchers, Matchers};

/// The type of a node's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Scalar,
    Vector,
    Matrix,
    String,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Scalar => "scalar",
            Kind::Vector => "instant vector",
            Kind::Matrix => "range vector",
            Kind::String => "string",
        }
    }
}

/// One selector of the query and the samples it needs.
#[derive(Clone, Debug)]
pub(crate) struct Selector {
    pub(crate) matchers: Matchers,
    /// The `@` time, resolved (`start()` / `end()` are the query's).
    pub(crate) at_ms: Option<i64>,
    pub(crate) offset_ms: i64,
    /// `Some` for a range selector (`x[5m]`).
    pub(crate) range_ms: Option<i64>,
    /// Samples in `fetch_start..=fetch_end` cover every evaluation.
    pub(crate) fetch_start: i64,
    pub(crate) fetch_end: i64,
}

impl Selector {
    /// The time the selector looks back from when the query is evaluated at `t`.
    pub(crate) fn reference_time(&self, t: i64) -> i64 {
        self.at_ms.unwrap_or(t) - self.offset_ms
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub(crate) fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le
        )
    }

    pub(crate) fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

/// How the two sides of a vector-vector operation are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cardinality {
    OneToOne,
    /// `group_left`: the left side is the "many" side.
    ManyToOne,
    /// `group_right`
    OneToMany,
    /// The set operators.
    ManyToMany,
}

#[derive(Clone, Debug)]
pub(crate) struct VectorMatching {
    pub(crate) card: Cardinality,
    /// `on(...)` (true) or `ignoring(...)` / no modifier (false).
    pub(crate) on: bool,
    pub(crate) labels: Vec<String>,
    /// The labels `group_left(...)` / `group_right(...)` copy from the "one" side.
    pub(crate) include: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Quantile,
    CountValues,
}

/// `by (...)` (`without == false`) or `without (...)`.
#[derive(Clone, Debug)]
pub(crate) struct Grouping {
    pub(crate) without: bool,
    pub(crate) labels: Vec<String>,
}

/// The functions this engine evaluates.
#[derive(Clone, Debug)]
pub(crate) enum Func {
    Abs,
    Ceil,
    Floor,
    Round,
    Clamp,
    ClampMin,
    ClampMax,
    Timestamp,
    Sort,
    SortDesc,
    LabelReplace {
        dst: String,
        replacement: String,
        src: String,
        regex: Regex,
    },
    LabelJoin {
        dst: String,
        separator: String,
        src: Vec<String>,
    },
    Time,
    Vector,
    Scalar,
    Rate,
    Irate,
    Increase,
    Delta,
    Idelta,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    QuantileOverTime,
    StddevOverTime,
    StdvarOverTime,
}

/// The evaluator's tree.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Number(f64),
    String(String),
    /// An instant vector selector: an index into [`Plan::selectors`].
    VectorSelector(usize),
    /// A range vector selector.
    MatrixSelector(usize),
    Negate(Box<Node>),
    Binary {
        op: BinOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
        return_bool: bool,
        matching: VectorMatching,
    },
    Aggregate {
        op: AggOp,
        param: Option<Box<Node>>,
        grouping: Grouping,
        expr: Box<Node>,
    },
    Call {
        func: Func,
        args: Vec<Node>,
    },
}

impl Node {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Node::Number(_) => Kind::Scalar,
            Node::String(_) => Kind::String,
            Node::VectorSelector(_) | Node::Aggregate { .. } => Kind::Vector,
            Node::MatrixSelector(_) => Kind::Matrix,
            Node::Negate(inner) => inner.kind(),
            Node::Binary { lhs, rhs, .. } => {
                if lhs.kind() == Kind::Scalar && rhs.kind() == Kind::Scalar {
                    Kind::Scalar
                } else {
                    Kind::Vector
                }
            }
            Node::Call { func, .. } => match func {
                Func::Time | Func::Scalar => Kind::Scalar,
                _ => Kind::Vector,
            },
        }
    }
}

/// A query ready to fetch: the tree and its selectors.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) root: Node,
    pub(crate) selectors: Vec<Selector>,
}

/// Builds the plan of `expr` evaluated at `start_ms..=end_ms` with `lookback_ms`.
pub(crate) fn plan(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    lookback_ms: i64,
) -> Result<Plan, QueryError> {
    let mut planner = Planner {
        start_ms,
        end_ms,
        lookback_ms,
        selectors: Vec::new(),
    };
    let root = planner.node(expr)?;
    Ok(Plan {
        root,
        selectors: planner.selectors,
    })
}

struct Planner {
    start_ms: i64,
    end_ms: i64,
    lookback_ms: i64,
    selectors: Vec<Selector>,
}

impl Planner {
    fn node(&mut self, expr: &Expr) -> Result<Node, QueryError> {
        Ok(match expr {
            Expr::NumberLiteral(n) => Node::Number(n.val),
            Expr::StringLiteral(s) => Node::String(s.val.clone()),
            Expr::Paren(p) => self.node(&p.expr)?,
            Expr::Unary(u) => Node::Negate(Box::new(self.node(&u.expr)?)),
            Expr::VectorSelector(vs) => Node::VectorSelector(self.selector(vs, None)?),
            Expr::MatrixSelector(ms) => {
                Node::MatrixSelector(self.selector(&ms.vs, Some(duration_ms(&ms.range)))?)
            }
            Expr::Binary(b) => self.binary(b.op, &b.lhs, &b.rhs, b.modifier.as_ref())?,
            Expr::Aggregate(a) => {
                let op = aggregate_op(a.op)?;
                let param = match &a.param {
                    Some(p) => Some(Box::new(self.node(p)?)),
                    None => None,
                };
                let grouping = match &a.modifier {
                    None => Grouping {
                        without: false,
                        labels: Vec::new(),
                    },
                    Some(LabelModifier::Include(l)) => Grouping {
                        without: false,
                        labels: label_list(l),
                    },
                    Some(LabelModifier::Exclude(l)) => Grouping {
                        without: true,
                        labels: label_list(l),
                    },
                };
                if op == AggOp::CountValues {
                    match param.as_deref() {
                        Some(Node::String(label)) if is_valid_label_name(label) => {}
                        Some(Node::String(label)) => {
                            return Err(QueryError::Evaluate(format!(
                                "invalid label name {label:?}"
                            )))
                        }
                        _ => {
                            return Err(QueryError::Unsupported(
                                "count_values() with a parameter that is not a string literal"
                                    .to_string(),
                            ))
                        }
                    }
                }
                Node::Aggregate {
                    op,
                    param,
                    grouping,
                    expr: Box::new(self.node(&a.expr)?),
                }
            }
            Expr::Call(call) => self.call(call.func.name, &call.args.args)?,
            Expr::Subquery(_) => {
                return Err(QueryError::Unsupported(
                    "subqueries (`x[5m:1m]`)".to_string(),
                ))
            }
            Expr::Extension(e) => {
                return Err(QueryError::Unsupported(format!(
                    "extension expression {}",
                    e.expr.name()
                )))
            }
        })
    }

    fn selector(
        &mut self,
        vs: &VectorSelector,
        range_ms: Option<i64>,
    ) -> Result<usize, QueryError> {
        let matchers = selector_matchers(vs.name.as_deref(), &vs.matchers)?;
        let at_ms = match &vs.at {
            None => None,
            Some(AtModifier::Start) => Some(self.start_ms),
            Some(AtModifier::End) => Some(self.end_ms),
            Some(AtModifier::At(t)) => Some(system_time_ms(*t)),
        };
        let offset_ms = match &vs.offset {
            None => 0,
            Some(Offset::Pos(d)) => duration_ms(d),
            Some(Offset::Neg(d)) => -duration_ms(d),
        };
        let (first, last) = match at_ms {
            Some(at) => (at - offset_ms, at - offset_ms),
            None => (self.start_ms - offset_ms, self.end_ms - offset_ms),
        };
        // Left-open windows: (t - lookback, t] and (t - range, t].
        let back = range_ms.unwrap_or(self.lookback_ms);
        self.selectors.push(Selector {
            matchers,
            at_ms,
            offset_ms,
            range_ms,
            fetch_start: first - back + 1,
            fetch_end: last,
        });
        Ok(self.selectors.len() - 1)
    }

    fn binary(
        &mut self,
        op: token::TokenType,
        lhs: &Expr,
        rhs: &Expr,
        modifier: Option<&BinModifier>,
    ) -> Result<Node, QueryError> {
        let op = binary_op(op)?;
        let mut matching = VectorMatching {
            card: if op.is_set() {
                Cardinality::ManyToMany
            } else {
                Cardinality::OneToOne
            },
            on: false,
            labels: Vec::new(),
            include: Vec::new(),
        };
        let mut return_bool = false;
        if let Some(m) = modifier {
            if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                return Err(QueryError::Unsupported(
                    "fill modifiers of binary operators".to_string(),
                ));
            }
            return_bool = m.return_bool;
            match &m.card {
                VectorMatchCardinality::OneToOne => {}
                VectorMatchCardinality::ManyToMany => matching.card = Cardinality::ManyToMany,
                VectorMatchCardinality::ManyToOne(l) => {
                    matching.card = Cardinality::ManyToOne;
                    matching.include = label_list(l);
                }
                VectorMatchCardinality::OneToMany(l) => {
                    matching.card = Cardinality::OneToMany;
                    matching.include = label_list(l);
                }
            }
            if op.is_set() {
                matching.card = Cardinality::ManyToMany;
            }
            match &m.matching {
                None => {}
                Some(LabelModifier::Include(l)) => {
                    matching.on = true;
                    matching.labels = label_list(l);
                }
                Some(LabelModifier::Exclude(l)) => matching.labels = label_list(l),
            }
        }
        Ok(Node::Binary {
            op,
            lhs: Box::new(self.node(lhs)?),
            rhs: Box::new(self.node(rhs)?),
            return_bool,
            matching,
        })
    }

    fn call(&mut self, name: &str, args: &[Box<Expr>]) -> Result<Node, QueryError> {
        let string_arg = |i: usize| -> Result<String, QueryError> {
            match args.get(i).map(|a| unwrap_parens(a)) {
                Some(Expr::StringLiteral(s)) => Ok(s.val.clone()),
                _ => Err(QueryError::Unsupported(format!(
                    "{name}() with argument {} that is not a string literal",
                    i + 1
                ))),
            }
        };
        let func = match name {
            "abs" => Func::Abs,
            "ceil" => Func::Ceil,
            "floor" => Func::Floor,
            "round" => Func::Round,
            "clamp" => Func::Clamp,
            "clamp_min" => Func::ClampMin,
            "clamp_max" => Func::ClampMax,
            "timestamp" => Func::Timestamp,
            "sort" => Func::Sort,
            "sort_desc" => Func::SortDesc,
            "time" => Func::Time,
            "vector" => Func::Vector,
            "scalar" => Func::Scalar,
            "rate" => Func::Rate,
            "irate" => Func::Irate,
            "increase" => Func::Increase,
            "delta" => Func::Delta,
            "idelta" => Func::Idelta,
            "avg_over_time" => Func::AvgOverTime,
            "min_over_time" => Func::MinOverTime,
            "max_over_time" => Func::MaxOverTime,
            "sum_over_time" => Func::SumOverTime,
            "count_over_time" => Func::CountOverTime,
            "last_over_time" => Func::LastOverTime,
            "quantile_over_time" => Func::QuantileOverTime,
            "stddev_over_time" => Func::StddevOverTime,
            "stdvar_over_time" => Func::StdvarOverTime,
            "label_replace" => {
                let dst = string_arg(1)?;
                let replacement = string_arg(2)?;
                let src = string_arg(3)?;
                let regex_text = string_arg(4)?;
                let regex = Regex::new(&format!("(?s:^(?:{regex_text})$)")).map_err(|_| {
                    QueryError::Evaluate(format!(
                        "invalid regular expression in label_replace(): {regex_text}"
                    ))
                })?;
                if !is_valid_label_name(&dst) {
                    return Err(QueryError::Evaluate(format!(
                        "invalid destination label name in label_replace(): {dst}"
                    )));
                }
                let vector = self.node(&args[0])?;
                return Ok(Node::Call {
                    func: Func::LabelReplace {
                        dst,
                        replacement,
                        src,
                        regex,
                    },
                    args: vec![vector],
                });
            }
            "label_join" => {
                let dst = string_arg(1)?;
                let separator = string_arg(2)?;
                let src = (3..args.len())
                    .map(string_arg)
                    .collect::<Result<Vec<_>, _>>()?;
                if !is_valid_label_name(&dst) {
                    return Err(QueryError::Evaluate(format!(
                        "invalid destination label name in label_join(): {dst}"
                    )));
                }
                if let Some(bad) = src.iter().find(|s| !is_valid_label_name(s)) {
                    return Err(QueryError::Evaluate(format!(
                        "invalid source label name in label_join(): {bad}"
                    )));
                }
                let vector = self.node(&args[0])?;
                return Ok(Node::Call {
                    func: Func::LabelJoin {
                        dst,
                        separator,
                        src,
                    },
                    args: vec![vector],
                });
            }
            other => {
                return Err(QueryError::Unsupported(format!(
                    "function {other}() is not supported"
                )))
            }
        };
        let args = args
            .iter()
            .map(|a| self.node(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Node::Call { func, args })
    }
}

fn unwrap_parens(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

fn label_list(labels: &ParserLabels) -> Vec<String> {
    labels.labels.clone()
}

fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(before) => -duration_ms(&before.duration()),
    }
}

fn binary_op(op: token::TokenType) -> Result<BinOp, QueryError> {
    Ok(match op.id() {
        token::T_ADD => BinOp::Add,
        token::T_SUB => BinOp::Sub,
        token::T_MUL => BinOp::Mul,
        token::T_DIV => BinOp::Div,
        token::T_MOD => BinOp::Mod,
        token::T_POW => BinOp::Pow,
        token::T_ATAN2 => BinOp::Atan2,
        token::T_EQLC => BinOp::Eq,
        token::T_NEQ => BinOp::Ne,
        token::T_GTR => BinOp::Gt,
        token::T_LSS => BinOp::Lt,
        token::T_GTE => BinOp::Ge,
        token::T_LTE => BinOp::Le,
        token::T_LAND => BinOp::And,
        token::T_LOR => BinOp::Or,
        token::T_LUNLESS => BinOp::Unless,
        _ => return Err(QueryError::Unsupported(format!("binary operator {op}"))),
    })
}

fn aggregate_op(op: token::TokenType) -> Result<AggOp, QueryError> {
    Ok(match op.id() {
        token::T_SUM => AggOp::Sum,
        token::T_AVG => AggOp::Avg,
        token::T_MIN => AggOp::Min,
        token::T_MAX => AggOp::Max,
        token::T_COUNT => AggOp::Count,
        token::T_GROUP => AggOp::Group,
        token::T_STDDEV => AggOp::Stddev,
        token::T_STDVAR => AggOp::Stdvar,
        token::T_TOPK => AggOp::Topk,
        token::T_BOTTOMK => AggOp::Bottomk,
        token::T_QUANTILE => AggOp::Quantile,
        token::T_COUNT_VALUES => AggOp::CountValues,
        _ => return Err(QueryError::Unsupported(format!("aggregation {op}()"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(query: &str, start: i64, end: i64) -> Result<Plan, QueryError> {
        let expr = promql_parser::parser::parse(query).map_err(QueryError::Parse)?;
        plan(&expr, start, end, 300_000)
    }

    #[test]
    fn windows_cover_lookback_range_offset_and_at() {
        let p = plan_of(
            "rate(a[5m] offset 1m) + b + c @ 1000 + d offset -30s",
            3_600_000,
            7_200_000,
        )
        .unwrap();
        let windows: Vec<(i64, i64)> = p
            .selectors
            .iter()
            .map(|s| (s.fetch_start, s.fetch_end))
            .collect();
        assert_eq!(
            windows,
            [
                (3_600_000 - 60_000 - 300_000 + 1, 7_200_000 - 60_000),
                (3_600_000 - 300_000 + 1, 7_200_000),
                (1_000_000 - 300_000 + 1, 1_000_000),
                (3_600_000 + 30_000 - 300_000 + 1, 7_200_000 + 30_000),
            ]
        );
        assert_eq!(p.selectors[0].range_ms, Some(300_000));
        assert_eq!(p.selectors[0].matchers.metric_name(), Some("a"));
        assert_eq!(p.selectors[2].reference_time(5), 1_000_000);
        assert_eq!(p.selectors[3].reference_time(100_000), 130_000);
    }

    #[test]
    fn at_start_and_end_resolve_to_the_query_range() {
        let p = plan_of("a @ start() + a @ end()", 10_000, 20_000).unwrap();
        assert_eq!(p.selectors[0].at_ms, Some(10_000));
        assert_eq!(p.selectors[1].at_ms, Some(20_000));
    }

    #[test]
    fn unsupported_constructs_are_named() {
        let cases = [
            (
                "histogram_quantile(0.9, x)",
                "function histogram_quantile() is not supported",
            ),
            ("max_over_time(x[5m:1m])", "subqueries"),
            ("changes(x[5m])", "function changes() is not supported"),
            ("limitk(2, x)", "aggregation limitk()"),
        ];
        for (query, expected) in cases {
            let err = plan_of(query, 0, 0).unwrap_err();
            assert!(
                matches!(err, QueryError::Unsupported(_)) && err.to_string().contains(expected),
                "{query}: {err}"
            );
            assert_eq!(err.http_status(), 400);
        }
    }

    #[test]
    fn label_function_arguments_are_checked() {
        let err = plan_of(r#"label_replace(x, "dst", "$1", "src", "(")"#, 0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid regular expression in label_replace(): ("
        );
        let err = plan_of(r#"label_replace(x, "1dst", "$1", "src", "(.*)")"#, 0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid destination label name in label_replace(): 1dst"
        );
        let err = plan_of(r#"label_join(x, "dst", ",", "a-b")"#, 0, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid source label name in label_join(): a-b"
        );
    }

    #[test]
    fn kinds_follow_promql_types() {
        let kind = |q: &str| plan_of(q, 0, 0).unwrap().root.kind();
        assert_eq!(kind("1 + 2"), Kind::Scalar);
        assert_eq!(kind("x + 2"), Kind::Vector);
        assert_eq!(kind("x[5m]"), Kind::Matrix);
        assert_eq!(kind(r#""s""#), Kind::String);
        assert_eq!(kind("scalar(x)"), Kind::Scalar);
        assert_eq!(kind("-(time())"), Kind::Scalar);
        assert_eq!(kind("sum(x)"), Kind::Vector);
    }
}
