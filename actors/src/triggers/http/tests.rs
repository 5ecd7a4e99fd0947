use axum::http::Method;

use super::routes::{to_matchit, RouteTable};

#[test]
fn params_and_wildcards_resolve() {
    let mut t = RouteTable::default();
    t.insert(&Method::POST, "/orders/:id", "a").unwrap();
    t.insert(&Method::GET, "/files/*rest", "b").unwrap();
    t.insert(&Method::GET, "/orders/:id", "c").unwrap();
    let (name, params) = t.lookup(&Method::POST, "/orders/42").unwrap();
    assert_eq!((name.as_str(), params["id"].as_str()), ("a", "42"));
    let (name, params) = t.lookup(&Method::GET, "/files/x/y.txt").unwrap();
    assert_eq!((name.as_str(), params["rest"].as_str()), ("b", "x/y.txt"));
    assert!(t.lookup(&Method::DELETE, "/orders/42").is_none());
    assert_eq!(t.methods_for("/orders/42"), vec![Method::GET, Method::POST]);
    let (_, params) = t.lookup(&Method::POST, "/orders/a%2Fb%20c%C3%A9").unwrap();
    assert_eq!(params["id"], "a/b cé");
    let (_, params) = t.lookup(&Method::GET, "/files/x/100%25/%zz/%4").unwrap();
    assert_eq!(params["rest"], "x/100%/%zz/%4");
    // Not UTF-8 once decoded: kept as sent.
    let (_, params) = t.lookup(&Method::GET, "/files/%ff%41").unwrap();
    assert_eq!(params["rest"], "%ff%41");
    let (_, params) = t.lookup(&Method::GET, "/files/100%25").unwrap();
    assert_eq!(params["rest"], "100%");
}

#[test]
fn conflicts_and_bad_paths_are_rejected() {
    let mut t = RouteTable::default();
    t.insert(&Method::POST, "/orders/:id", "a").unwrap();
    let e = t.insert(&Method::POST, "/orders/:order", "b").unwrap_err();
    assert!(e.contains("conflicts") && e.contains("trigger `a`"), "{e}");
    assert!(t.insert(&Method::POST, "/orders/:id", "c").is_err());
    assert!(to_matchit("orders").is_err());
    assert!(to_matchit("/hooks/x").is_err());
    assert!(to_matchit("/a/*rest/b").is_err());
    assert!(to_matchit("/a/x:y").is_err());
    assert_eq!(to_matchit("/a/:id/*rest").unwrap(), "/a/{id}/{*rest}");
}
