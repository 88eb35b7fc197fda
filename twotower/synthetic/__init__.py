"""The synthetic shop: product images joined to simulated shoppers, with known ground truth.

No public dataset has both product images and the interaction log of people who shop them,
so the demo and the tests generate one. The generative model, all of it seeded:

- **Items** i = 0..N−1 have a category c(i), a pattern p(i) and a colour k(i), drawn
  independently and uniformly. Their images are procedural (a category silhouette filled with
  a pattern in the item's colour, at a random position, scale and tilt, on a textured noisy
  background) or come from a given labelled array (e.g. Fashion-MNIST), whose classes are then
  the categories.
- **Popularity** is Zipf's law over a random ranking of the items (Zipf 1949; Breslau et al.
  1999, "Web caching and Zipf-like distributions": P(i) = Ω / i^α): pop(i) ∝ rank(i)^−s.
- **Releases**: a share of the items is on sale from the start; the rest are released at
  uniform random times over the span, so a temporal split has cold items.
- **Shoppers** u have Dirichlet tastes θ_u over categories and φ_u over patterns (small
  concentration, so tastes are peaky: a user cares about one or two of each), as the topic
  mixtures of LDA (Blei, Ng and Jordan 2003); colour is a nuisance nobody prefers. Activity is
  lognormal.
- **Each interaction** picks a user u ∝ activity(u), a time t uniform over the span, and an
  item among those released by t:
      P(i | u, t) = θ_u[c(i)] · φ_u[p(i)] · pop(i) · [release(i) ≤ t] / Z_u(t).
  Events are independent draws, so a user may return to an item (re-views and re-purchases,
  as in real logs); keeping them is what makes `Shop.true_scores` the exact distribution of
  the log. Anything that needs unique (user, item) pairs deduplicates downstream.

Ids are strings: items ``"p00042"`` (row 42 of `Shop.catalog` and of `Shop.images`), users
``"u00007"`` (row 7 of the taste arrays); the digits widen for more than 100,000 of either.
Timestamps and release times are int64 seconds since the Unix epoch.

The modules: `shop` (`ShopConfig`; the `Shop`, with its true P(item | user); `write_shop`),
`simulate` (`make_shop`: the draws above), `images` (the procedural drawings) and `oracle`
(`ShopOracle`, the scorer that ranks by the truth).
"""

from twotower.synthetic.images import CATEGORY_NAMES, COLOUR_NAMES, PATTERN_NAMES, render_images
from twotower.synthetic.oracle import ShopOracle
from twotower.synthetic.shop import Shop, ShopConfig, write_shop
from twotower.synthetic.simulate import make_shop

__all__ = [
    "CATEGORY_NAMES",
    "COLOUR_NAMES",
    "PATTERN_NAMES",
    "Shop",
    "ShopConfig",
    "ShopOracle",
    "make_shop",
    "render_images",
    "write_shop",
]
