//! Just enough of a SQL tokenizer to see which statements in the binlog touch a captured table.

/// What a binlog `Query` event means for a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ddl {
    /// `DROP TABLE` of these `(schema, table)`s.
    Drop(Vec<(String, String)>),
    /// `RENAME TABLE a TO b` / `ALTER TABLE a RENAME TO b`: `(from, to)` pairs.
    Rename(Vec<((String, String), (String, String))>),
    /// `TRUNCATE TABLE`.
    Truncate((String, String)),
    /// Any other `ALTER TABLE` (columns may have changed).
    Alter((String, String)),
    /// MariaDB's `CREATE OR REPLACE TABLE`: the old table (and its rows) is gone.
    Replace((String, String)),
    /// A row change written as a statement (`INSERT`/`UPDATE`/`DELETE`/`REPLACE`/`LOAD`): a
    /// session switched to `binlog_format=STATEMENT`, so its rows are not in the binlog.
    Dml,
    /// Anything else (`BEGIN`, `COMMIT`, `CREATE`, comments, …).
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Punct(char),
}

fn tokens(sql: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let b: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < b.len() && out.len() < 4096 {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            // A comment; MariaDB's executable comments (/*!…*/) are skipped as well.
            i += 2;
            while i < b.len() && !(b[i] == '*' && b.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == '#' || (c == '-' && b.get(i + 1) == Some(&'-')) {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '`' {
            let mut s = String::new();
            i += 1;
            while i < b.len() {
                if b[i] == '`' {
                    if b.get(i + 1) == Some(&'`') {
                        s.push('`');
                        i += 2;
                        continue;
                    }
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Quoted(s));
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let mut s = String::new();
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '$') {
                s.push(b[i]);
                i += 1;
            }
            out.push(Tok::Word(s));
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

struct P<'a> {
    t: &'a [Tok],
    i: usize,
    schema: &'a str,
}

impl P<'_> {
    fn kw(&mut self, k: &str) -> bool {
        match self.t.get(self.i) {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k) => {
                self.i += 1;
                true
            }
            _ => false,
        }
    }
    fn punct(&mut self, p: char) -> bool {
        if self.t.get(self.i) == Some(&Tok::Punct(p)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        match self.t.get(self.i) {
            Some(Tok::Word(w) | Tok::Quoted(w)) => {
                self.i += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }
    fn table(&mut self) -> Option<(String, String)> {
        let a = self.ident()?;
        if self.punct('.') {
            let b = self.ident()?;
            Some((a, b))
        } else {
            Some((self.schema.to_string(), a))
        }
    }
    fn tables(&mut self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        while let Some(t) = self.table() {
            v.push(t);
            if !self.punct(',') {
                break;
            }
        }
        v
    }
}

/// Whether `sql` names table `name` (as a whole identifier, quoted or not).
pub(crate) fn mentions(sql: &str, name: &str) -> bool {
    tokens(sql)
        .iter()
        .any(|t| matches!(t, Tok::Word(w) | Tok::Quoted(w) if w == name))
}

/// Classifies `sql`, run with default schema `schema`.
pub(crate) fn classify(sql: &str, schema: &str) -> Ddl {
    let t = tokens(sql);
    let mut p = P {
        t: &t,
        i: 0,
        schema,
    };
    if p.kw("DROP") {
        p.kw("TEMPORARY");
        if !p.kw("TABLE") {
            return Ddl::Other;
        }
        if p.kw("IF") {
            p.kw("EXISTS");
        }
        return Ddl::Drop(p.tables());
    }
    if p.kw("RENAME") {
        if !p.kw("TABLE") {
            return Ddl::Other;
        }
        let mut pairs = Vec::new();
        while let Some(from) = p.table() {
            if !p.kw("TO") {
                break;
            }
            let Some(to) = p.table() else { break };
            pairs.push((from, to));
            if !p.punct(',') {
                break;
            }
        }
        return Ddl::Rename(pairs);
    }
    if p.kw("CREATE") {
        if !(p.kw("OR") && p.kw("REPLACE")) {
            return Ddl::Other;
        }
        p.kw("TEMPORARY");
        if !p.kw("TABLE") {
            return Ddl::Other;
        }
        return p.table().map_or(Ddl::Other, Ddl::Replace);
    }
    if p.kw("TRUNCATE") {
        p.kw("TABLE");
        return p.table().map_or(Ddl::Other, Ddl::Truncate);
    }
    if p.kw("ALTER") {
        p.kw("ONLINE");
        p.kw("IGNORE");
        if !p.kw("TABLE") {
            return Ddl::Other;
        }
        if p.kw("IF") {
            p.kw("EXISTS");
        }
        let Some(table) = p.table() else {
            return Ddl::Other;
        };
        // `ALTER TABLE t … RENAME [TO|AS] u` anywhere at the top level.
        while p.i < t.len() {
            if p.kw("RENAME") {
                if p.kw("COLUMN") || p.kw("INDEX") || p.kw("KEY") {
                    continue;
                }
                if !p.kw("TO") {
                    p.kw("AS");
                }
                if let Some(to) = p.table() {
                    return Ddl::Rename(vec![(table, to)]);
                }
            } else {
                p.i += 1;
            }
        }
        return Ddl::Alter(table);
    }
    for k in ["INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD"] {
        if p.kw(k) {
            return Ddl::Dml;
        }
    }
    Ddl::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> (String, String) {
        (s.into(), n.into())
    }

    #[test]
    fn statements_are_classified() {
        assert_eq!(
            classify("DROP TABLE `a`, db2.`b``x` /* generated by server */", "db"),
            Ddl::Drop(vec![t("db", "a"), t("db2", "b`x")])
        );
        assert_eq!(
            classify("drop table if exists a", "db"),
            Ddl::Drop(vec![t("db", "a")])
        );
        assert_eq!(
            classify("RENAME TABLE a TO b, c TO d.e", "db"),
            Ddl::Rename(vec![
                (t("db", "a"), t("db", "b")),
                (t("db", "c"), t("d", "e"))
            ])
        );
        assert_eq!(
            classify("alter table a add column x int", "db"),
            Ddl::Alter(t("db", "a"))
        );
        assert_eq!(
            classify("ALTER TABLE a RENAME COLUMN x TO y", "db"),
            Ddl::Alter(t("db", "a"))
        );
        assert_eq!(
            classify("ALTER TABLE a RENAME TO b", "db"),
            Ddl::Rename(vec![(t("db", "a"), t("db", "b"))])
        );
        assert_eq!(classify("TRUNCATE a", "db"), Ddl::Truncate(t("db", "a")));
        assert_eq!(
            classify("CREATE OR REPLACE TABLE x.a (id int)", "db"),
            Ddl::Replace(t("x", "a"))
        );
        assert_eq!(classify("CREATE TABLE a (id int)", "db"), Ddl::Other);
        assert!(mentions("insert into `orders` values (1)", "orders"));
        assert!(mentions("UPDATE db.orders SET x = 1", "orders"));
        assert!(!mentions("insert into orders_archive values (1)", "orders"));
        assert_eq!(classify("insert into a values (1)", "db"), Ddl::Dml);
        assert_eq!(classify("BEGIN", "db"), Ddl::Other);
        assert_eq!(classify("", "db"), Ddl::Other);
        assert_eq!(classify("/* unterminated", "db"), Ddl::Other);
        assert_eq!(classify("DROP TABLE", "db"), Ddl::Drop(vec![]));
    }
}
