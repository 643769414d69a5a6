// Live status on "my orders" and an order's page: the orders stream of the signed-in customer
// (server-sent events at /orders/events, signed in by the session cookie) updates each status
// shown as it changes. EventSource reconnects by itself, resuming with Last-Event-ID; the page
// works the same without it, only not live.
const shown = () => document.querySelectorAll('.status[data-order-id]');

if (shown().length > 0 && 'EventSource' in window) {
  const stream = new EventSource('/orders/events');
  stream.addEventListener('order', (event) => {
    let order;
    try {
      order = JSON.parse(event.data);
    } catch {
      return;
    }
    for (const status of shown()) {
      if (status.dataset.orderId === order.id && status.textContent !== order.status) {
        status.textContent = order.status;
      }
    }
  });
  // At the end of a session's token the stream says `expired` and ends; the browser connects
  // again, and the session cookie is renewed on the way.
}
