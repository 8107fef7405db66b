"""Cache-aside with cachewise in 60 seconds: read through, delete after commit."""

import sqlite3

from cachewise import Cache

db = sqlite3.connect(":memory:", check_same_thread=False)
db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
db.execute("INSERT INTO users VALUES (1, 'Ada')")
db.commit()

cache = Cache(ttl=60, stale_ttl=30)  # bounded in-memory backend by default


def load_user(user_id: int) -> dict[str, object] | None:
    row = db.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
    return None if row is None else {"id": row[0], "name": row[1]}


def get_user(user_id: int) -> dict[str, object] | None:
    # One loader call per key, however many threads ask at once. A missing user
    # (None) is cached briefly too (negative_ttl), so "not found" does not hammer the db.
    return cache.get_or_load(f"user:{user_id}", lambda: load_user(user_id))


def rename_user(user_id: int, name: str) -> None:
    db.execute("UPDATE users SET name = ? WHERE id = ?", (name, user_id))
    db.commit()  # commit first,
    cache.delete(f"user:{user_id}")  # then delete: never update the cache on write


print(get_user(1))  # miss: loads from the database
print(get_user(1))  # hit
rename_user(1, "Ada Lovelace")
print(get_user(1))  # miss again: the fresh row
print(get_user(2))  # None, cached as a negative entry


@cache.cached("user:{user_id}:name")
def user_name(user_id: int) -> str | None:
    user = load_user(user_id)
    return None if user is None else str(user["name"])


print(user_name(1), user_name(user_id=1))  # one load, one entry
user_name.invalidate(1)
print(cache.stats())
cache.close()
