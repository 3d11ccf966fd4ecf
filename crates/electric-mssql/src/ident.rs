//! Identifiers: strictly validated, then bracket-quoted as `QUOTENAME` does.
//!
//! `CHANGETABLE(CHANGES <table>, @v)` cannot take its table as a parameter, and neither can a
//! column list, so every name that reaches SQL text is an [`Ident`]: 1 to 128 characters, an ASCII
//! letter or `_` first, then ASCII letters, digits or `_`. Nothing else is accepted — no spaces,
//! brackets, quotes, dots, `@`, `#` or non-ASCII letters — and the quoting doubles any `]` anyway,
//! so a name can never end its brackets early.

use std::fmt;
use std::sync::Arc;

use electric_core::cdc::{CdcError, CdcResult, TableName};

/// The longest identifier SQL Server accepts (`sysname` is `nvarchar(128)`).
pub const MAX_IDENT_LEN: usize = 128;

/// A validated SQL Server identifier (a schema, table, column or common table expression name).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ident(Arc<str>);

impl Ident {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`CdcError::Config`] naming the identifier and the rule it breaks.
    pub fn new(name: &str) -> CdcResult<Self> {
        let mut chars = name.chars();
        let Some(first) = chars.next() else {
            return Err(CdcError::Config("empty identifier".into()));
        };
        if name.len() > MAX_IDENT_LEN {
            return Err(CdcError::Config(format!(
                "identifier {:?}… is longer than {MAX_IDENT_LEN} characters",
                name.chars().take(16).collect::<String>()
            )));
        }
        if !(first.is_ascii_alphabetic() || first == '_') {
            return Err(CdcError::Config(format!(
                "identifier {name:?} must start with an ASCII letter or '_'"
            )));
        }
        if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
            return Err(CdcError::Config(format!(
                "identifier {name:?} contains {bad:?}; only ASCII letters, digits and '_' are allowed"
            )));
        }
        Ok(Self(name.into()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in brackets, `]` doubled (what `QUOTENAME(name)` returns).
    pub fn quoted(&self) -> String {
        quote_name(&self.0)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ident({})", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `QUOTENAME(name)`: `[` + `name` with every `]` doubled + `]`.
///
/// Only ever applied to validated [`Ident`]s here; the doubling is defence in depth.
pub fn quote_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('[');
    for c in name.chars() {
        if c == ']' {
            s.push_str("]]");
        } else {
            s.push(c);
        }
    }
    s.push(']');
    s
}

/// A table: `schema.name`, both validated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableRef {
    /// The schema (`dbo` when none was given).
    pub schema: Ident,
    /// The table.
    pub name: Ident,
}

impl TableRef {
    /// A table from its two parts.
    ///
    /// # Errors
    /// [`CdcError::Config`] when either part is not a valid [`Ident`].
    pub fn new(schema: &str, name: &str) -> CdcResult<Self> {
        Ok(Self {
            schema: Ident::new(schema)?,
            name: Ident::new(name)?,
        })
    }

    /// Parses `schema.table` or `table` (schema `dbo`). Brackets are not accepted: names are
    /// validated, then quoted by this crate.
    ///
    /// # Errors
    /// [`CdcError::Config`] for more than two parts or an invalid part.
    pub fn parse(qualified: &str) -> CdcResult<Self> {
        let mut parts = qualified.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => Self::new("dbo", name),
            (Some(schema), Some(name), None) => Self::new(schema, name),
            _ => Err(CdcError::Config(format!(
                "table {qualified:?} must be `schema.table` or `table`"
            ))),
        }
    }

    /// `[schema].[name]`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.name.quoted())
    }

    /// The table's name in change items.
    pub fn table_name(&self) -> TableName {
        TableName::new(self.schema.as_str(), self.name.as_str())
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_and_quotes_them() {
        for ok in [
            "orders",
            "_x",
            "T004forecast_latest",
            "a1_B2",
            &"a".repeat(128),
        ] {
            assert_eq!(Ident::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(Ident::new("orders").unwrap().quoted(), "[orders]");
        assert_eq!(
            TableRef::parse("sales.orders").unwrap().quoted(),
            "[sales].[orders]"
        );
        assert_eq!(TableRef::parse("orders").unwrap().to_string(), "dbo.orders");
    }

    #[test]
    fn rejects_hostile_and_odd_identifiers() {
        for bad in [
            "",
            "t]; DROP TABLE x--",
            "t]",
            "[t]",
            "a b",
            "a;b",
            "a--",
            "a'b",
            "a\"b",
            "1abc",
            "@p",
            "#tmp",
            "a.b",
            "ä",
            "a\0",
            "a\n",
            "a/*",
            &"a".repeat(129),
        ] {
            assert!(
                matches!(Ident::new(bad), Err(CdcError::Config(_))),
                "{bad:?} was accepted"
            );
        }
        for bad in ["a.b.c", "dbo.t]; DROP TABLE x--", ".t", "s.", "[dbo].[t]"] {
            assert!(
                matches!(TableRef::parse(bad), Err(CdcError::Config(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn quote_name_doubles_closing_brackets() {
        assert_eq!(quote_name("t]; DROP TABLE x--"), "[t]]; DROP TABLE x--]");
        assert_eq!(quote_name("]]"), "[]]]]]");
    }
}
