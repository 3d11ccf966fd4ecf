//! Properties of the SQL builder: identifiers are accepted exactly when they follow the strict
//! rule, and the SQL text never depends on values (they are always parameters).

use electric_mssql::sql::{changes_sql, scan_sql, Param};
use electric_mssql::{Filter, Ident, TableQuery, TrackedTable};
use proptest::prelude::*;

fn strict(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
        && s.len() <= 128
}

fn query(table: &str, column: &str, filter: Filter) -> Option<TableQuery> {
    let spec = TrackedTable::new(table)
        .ok()?
        .columns(&[column])
        .ok()?
        .filter(filter);
    let key = vec![Ident::new("id").unwrap()];
    let cols = vec![
        Ident::new("id").unwrap(),
        Ident::new(column).ok()?,
        Ident::new("status").unwrap(),
    ];
    TableQuery::resolve(&spec, &key, &cols, None).ok()
}

proptest! {
    #[test]
    fn identifiers_follow_the_strict_rule(s in prop_oneof![any::<String>(), "[A-Za-z_0-9\\]\\[;' .\\-]{0,12}"]) {
        match Ident::new(&s) {
            Ok(id) => {
                prop_assert!(strict(&s), "{s:?} accepted");
                prop_assert_eq!(id.quoted(), format!("[{s}]"));
            }
            Err(_) => prop_assert!(!strict(&s), "{s:?} refused"),
        }
    }

    #[test]
    fn sql_text_never_depends_on_values(a in any::<String>(), b in any::<String>(), n in any::<i64>()) {
        let qa = query("dbo.orders", "qty", Filter::eq("status", a.as_str()).unwrap().or(Filter::eq("qty", n).unwrap())).unwrap();
        let qb = query("dbo.orders", "qty", Filter::eq("status", b.as_str()).unwrap().or(Filter::eq("qty", 0).unwrap())).unwrap();
        let after_a = [Param::Text(a.clone())];
        let after_b = [Param::Text(b.clone())];
        let (ca, cb) = (changes_sql(&qa, 1, Some(&after_a), 10).unwrap(), changes_sql(&qb, 99, Some(&after_b), 20).unwrap());
        prop_assert_eq!(&ca.text, &cb.text);
        prop_assert!(ca.params.contains(&Param::Text(a.clone())));
        let (sa, sb) = (scan_sql(&qa, Some(&after_a), 10).unwrap(), scan_sql(&qb, Some(&after_b), 30).unwrap());
        prop_assert_eq!(&sa.text, &sb.text);
    }

    #[test]
    fn accepted_names_never_bring_sql_syntax(t in "[A-Za-z_0-9\\];' \\-]{1,10}", c in "[A-Za-z_0-9\\];' \\-]{1,10}") {
        if let Some(q) = query(&format!("dbo.{t}"), &c, Filter::is_null("status").unwrap()) {
            for sql in [changes_sql(&q, 1, None, 5).unwrap(), scan_sql(&q, None, 5).unwrap()] {
                for bad in [";", "'", "--", "/*", "]]"] {
                    prop_assert!(!sql.text.contains(bad), "{bad} in {}", sql.text);
                }
            }
        } else {
            prop_assert!(!(strict(&t) && strict(&c)), "{t:?}/{c:?} refused");
        }
    }
}
