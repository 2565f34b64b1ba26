from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListProductsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Product(_message.Message):
    __slots__ = ("sku", "name", "price_cents", "stock")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    price_cents: int
    stock: int
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., price_cents: _Optional[int] = ..., stock: _Optional[int] = ...) -> None: ...

class ProductList(_message.Message):
    __slots__ = ("products", "replica")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    replica: str
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ..., replica: _Optional[str] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("order_id", "sku", "quantity")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    sku: str
    quantity: int
    def __init__(self, order_id: _Optional[str] = ..., sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("reservation_id", "unit_price_cents", "replica")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    unit_price_cents: int
    replica: str
    def __init__(self, reservation_id: _Optional[str] = ..., unit_price_cents: _Optional[int] = ..., replica: _Optional[str] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("order_id", "amount_cents")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    amount_cents: int
    def __init__(self, order_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_id", "amount_cents", "replica")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    amount_cents: int
    replica: str
    def __init__(self, payment_id: _Optional[str] = ..., amount_cents: _Optional[int] = ..., replica: _Optional[str] = ...) -> None: ...

class PlaceOrderRequest(_message.Message):
    __slots__ = ("order_id", "sku", "quantity")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    sku: str
    quantity: int
    def __init__(self, order_id: _Optional[str] = ..., sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("order_id", "sku", "quantity", "total_cents", "reservation_id", "payment_id", "replica", "inventory_replica", "payments_replica")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_REPLICA_FIELD_NUMBER: _ClassVar[int]
    PAYMENTS_REPLICA_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    sku: str
    quantity: int
    total_cents: int
    reservation_id: str
    payment_id: str
    replica: str
    inventory_replica: str
    payments_replica: str
    def __init__(self, order_id: _Optional[str] = ..., sku: _Optional[str] = ..., quantity: _Optional[int] = ..., total_cents: _Optional[int] = ..., reservation_id: _Optional[str] = ..., payment_id: _Optional[str] = ..., replica: _Optional[str] = ..., inventory_replica: _Optional[str] = ..., payments_replica: _Optional[str] = ...) -> None: ...
