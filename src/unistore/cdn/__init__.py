"""CDN delivery: URL makers (CloudFront signed URLs and cookies, BunnyCDN tokens, plain CDN
domains) and cache purgers (CloudFront invalidations, BunnyCDN, Cloudflare and Spaces CDN purges).

The :class:`~unistore.layers.CDN` layer puts them in front of any store (``docs/cdn.md``)::

    from unistore.cdn import CloudFrontInvalidator, CloudFrontURLs
    from unistore.layers import CDN

    store = CDN(s3, urls=CloudFrontURLs("https://d111.cloudfront.net", "K2JCJMDEHXQW5F", pem),
                purger=CloudFrontInvalidator("E1ABCDEF"), private=True)
"""

from ._purge import BunnyPurger, CloudflarePurger, CloudFrontInvalidator, Purger, SpacesPurger
from ._urls import BunnyURLs, CDNUrls, CloudFrontURLs, PlainCDN, attachment, cdn_path

__all__ = [
    "BunnyPurger",
    "BunnyURLs",
    "CDNUrls",
    "CloudFrontInvalidator",
    "CloudFrontURLs",
    "CloudflarePurger",
    "PlainCDN",
    "Purger",
    "SpacesPurger",
    "attachment",
    "cdn_path",
]
