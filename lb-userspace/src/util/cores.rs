//! Work shared out over the machine's cores: the few steps that are CPU-bound at
//! 1,000 x 100 (parsing the services' items, building their tables, filling their maps).

/// `f` of each item, in order. With at least `from` items and more than one core, the
/// items are cut into one run per core, each on a thread of its own.
pub fn map<T: Sync, R: Send>(items: &[T], from: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if items.len() < from || workers <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(workers);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_items_order_whatever_the_split() {
        let items: Vec<u32> = (0..1000).collect();
        for from in [0, 1, 999, 1000, 1001] {
            assert_eq!(
                super::map(&items, from, |x| x * 2),
                items.iter().map(|x| x * 2).collect::<Vec<_>>()
            );
        }
        assert!(super::map(&[] as &[u32], 0, |x| *x).is_empty());
    }
}
