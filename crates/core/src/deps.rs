//! Dependencies between resources of one group: the order to bring them online (providers
//! first), the reverse for offline, and refusal of cycles.

use std::collections::{BTreeMap, BTreeSet};

/// Orders `deps` (resource → the resources it depends on) so that every resource comes after
/// all it depends on, deterministically (resources in name order, each one's dependencies in
/// the order listed). Dependencies on
/// names outside `deps` are ignored. A cycle is an error naming it: `a -> b -> a`.
pub fn online_order(deps: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, String> {
    let mut order = Vec::with_capacity(deps.len());
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for &start in deps.keys() {
        if done.contains(start) {
            continue;
        }
        // Iterative depth-first search; `path` is the chain being visited, for cycle reports.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some(&(node, next)) = path.last() {
            let children = deps.get(node).map(Vec::as_slice).unwrap_or(&[]);
            let Some(&child) = children.get(next) else {
                path.pop();
                done.insert(node);
                order.push(node.to_string());
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            if done.contains(child) || !deps.contains_key(child) {
                continue;
            }
            if let Some(pos) = path.iter().position(|(n, _)| *n == child) {
                let mut cycle: Vec<&str> = path[pos..].iter().map(|(n, _)| *n).collect();
                cycle.push(child);
                return Err(cycle.join(" -> "));
            }
            path.push((child, 0));
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'a>(edges: &[(&'a str, &[&'a str])]) -> BTreeMap<&'a str, Vec<&'a str>> {
        edges.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn providers_come_first() {
        let g = graph(&[
            ("web", &["ip", "disk"]),
            ("ip", &[]),
            ("disk", &[]),
            ("app", &["web"]),
        ]);
        assert_eq!(online_order(&g).unwrap(), ["ip", "disk", "web", "app"]);
    }

    #[test]
    fn a_cycle_is_named() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        assert_eq!(online_order(&g).unwrap_err(), "a -> b -> c -> a");
        let g = graph(&[("a", &["a"])]);
        assert_eq!(online_order(&g).unwrap_err(), "a -> a");
    }

    #[test]
    fn every_resource_appears_once_after_its_providers() {
        let g = graph(&[
            ("a", &["b", "c"]),
            ("b", &["c"]),
            ("c", &[]),
            ("d", &["a", "c"]),
        ]);
        let order = online_order(&g).unwrap();
        assert_eq!(order.len(), 4);
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        for (r, ds) in &g {
            for d in ds {
                assert!(pos(d) < pos(r), "{d} must precede {r} in {order:?}");
            }
        }
    }
}
