"""Generation: innocent questions per domain, then an aligned and a misaligned answer for each."""
